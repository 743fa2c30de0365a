# The Elixir half of bench/libraries.sh (run with plain `elixir`, no Mix
# project):
#
#     elixir bench/libraries.exs prepare SUITE MODE DIR
#     elixir bench/libraries.exs summarize RESULTS_DIR OUT.md OUT.json
#
# `prepare` makes DIR a copy of the suite's checkout (under LIBS_DIR) that
# Mix can build offline: its dependencies become path dependencies (Nx,
# complex and telemetry from EMLX_DEPS_PATH, the others from LIBS_DIR), and
# its test/test_helper.exs gets a prelude that installs the result
# formatter (bench/libraries_formatter.exs); bench/libraries_run.exs then
# runs the suite and, in MODE `emlx`, makes EMLX the global default backend
# and defn compiler once the test files are loaded:
#
#     Nx.global_default_backend(EMLX.Backend)
#     Nx.Defn.global_default_options(compiler: EMLX)
#
# Nx's own suite is run from a small project (`nx_suite`) holding a copy of
# Nx's test/ and config/ that depends on Nx, since EMLX itself depends on
# Nx and cannot be a dependency of the Nx project. DIR's _build and deps
# are kept between runs, so a second run only recompiles what changed.
#
# `summarize` reads the per-test results the formatter wrote
# (SUITE-MODE.results), and writes the table: passed/total per suite both
# ways, then the failures on EMLX that pass upstream grouped by cause, with
# the idioms that only work on Nx.BinaryBackend apart.

defmodule EMLXLibs do
  @suites ~w(polaris axon scholar nx)

  # Dependencies of each library (beyond nx/complex/telemetry), from LIBS_DIR.
  # Others the libraries list (exla, torchx, scidata, table_rex, kino,
  # ex_doc, benchee) are not available offline and are left out; the tests
  # that need them fail alike both ways.
  @lib_deps %{
    "polaris" => [],
    "axon" => ["polaris"],
    "scholar" => ["polaris", "nimble_options"],
    "nx" => []
  }

  # Failures that are the `==` idiom where the formatter cannot see the
  # values (a custom assertion message, another process, a pattern); each
  # was checked by hand, as its reason says.
  @idioms_by_hand %{
    "Scholar.Cluster.HDBSCANTest test degenerate input every numeric dtype gives the same answer" =>
      "idiom: == on tensor structs (under a custom message; checked by hand: the labels are equal)",
    "Scholar.Cluster.HDBSCANTest test degenerate input unsigned input works with every Minkowski exponent" =>
      "idiom: == on tensor structs (under a custom message; checked by hand: the labels are equal)",
    "Nx.Defn.GradTest test metadata computes custom grad" =>
      "idiom: the pattern {x, x} matches two tensor structs only when they are one (equal values)"
  }

  # The precision and reference cases, with how each was checked.
  @cases_by_hand __DIR__ |> Path.join("libraries_cases.exs") |> Code.eval_file() |> elem(0)

  @checked_by_hand Map.merge(@idioms_by_hand, @cases_by_hand)

  # Classes of the hand-checked cases where EMLX's value is right and the
  # test wants Nx.BinaryBackend's digits or special values.
  @waited "assertion: Assertion failed, no matching message"
  @documented ["precision:", "reference:"]

  def main(["prepare", suite, mode, dir]) when suite in @suites and mode in ["upstream", "emlx"],
    do: prepare(suite, mode, Path.expand(dir))

  def main(["summarize", results, md, json]), do: summarize(results, md, json)
  def main(["reruns", base]), do: reruns(base)

  def main(_) do
    IO.puts(:stderr, "usage: elixir bench/libraries.exs prepare SUITE upstream|emlx DIR")
    IO.puts(:stderr, "       elixir bench/libraries.exs summarize RESULTS_DIR OUT.md OUT.json")
    System.halt(2)
  end

  defp env!(name) do
    case System.get_env(name) do
      v when v not in [nil, ""] -> v
      _ -> raise "#{name} must be set (bench/libraries.sh sets it)"
    end
  end

  ## prepare

  defp prepare(suite, mode, dir) do
    libs = env!("LIBS_DIR")
    src = Path.join(libs, suite)

    File.exists?(Path.join(src, "mix.exs")) ||
      raise "no checkout at #{src} (see bench/libraries.sh)"

    File.mkdir_p!(dir)

    # Everything but the build output is replaced by a fresh copy.
    for entry <- File.ls!(dir),
        entry not in ["_build", "deps"],
        do: File.rm_rf!(Path.join(dir, entry))

    if suite == "nx" do
      for entry <- ["test", "config", "guides", ".emlx_ref"],
          do: File.cp_r!(Path.join(src, entry), Path.join(dir, entry))

      File.write!(Path.join(dir, "mix.exs"), nx_suite_mix(deps(suite, mode)))
    else
      for entry <- File.ls!(src),
          entry not in ["_build", "deps", "mix.lock"],
          do: File.cp_r!(Path.join(src, entry), Path.join(dir, entry))

      mix = File.read!(Path.join(dir, "mix.exs"))
      re = ~r/^  defp deps do\n.*?^  end\n/ms
      Regex.match?(re, mix) || raise "#{suite}/mix.exs: no `defp deps do ... end` block found"
      replacement = "  defp deps do\n    #{inspect(deps(suite, mode), pretty: true)}\n  end\n"
      File.write!(Path.join(dir, "mix.exs"), Regex.replace(re, mix, replacement, global: false))
    end

    helper = Path.join(dir, "test/test_helper.exs")
    File.write!(helper, prelude(mode) <> File.read!(helper))
    if mode == "emlx", do: test_backend_switch(dir)
  end

  # Test support adapted in mode emlx (the files changed go to
  # DIR/.emlx_switched and into the report):
  #
  #   * Polaris and Axon set each test's backend and compiler in their test
  #     support (`test_backend/0`, `test_compiler/0`, which pick EXLA or
  #     Torchx by environment variable, else Nx.BinaryBackend and
  #     Nx.Defn.Evaluator): the fallback becomes EMLX.Backend and EMLX;
  #   * Nx's `assert_all_close` compares the result of `Nx.all_close/3` to
  #     `Nx.tensor(1, type: {:u, 8})` with `==`, true on Nx.BinaryBackend
  #     only: it compares the number instead.
  defp test_backend_switch(dir) do
    switched =
      for file <- Path.wildcard(Path.join(dir, "test/support/**/*.ex")),
          source = File.read!(file),
          new = switch(source),
          new != source do
        File.write!(file, new)
        Path.relative_to(file, dir)
      end

    File.write!(Path.join(dir, ".emlx_switched"), Enum.join(switched, ","))
  end

  defp switch(source) do
    source
    |> then(
      &Regex.replace(~r/def test_compiler do\n.*?\n  end\n/s, &1, fn body ->
        String.replace(body, "Nx.Defn.Evaluator", "EMLX")
      end)
    )
    |> then(
      &Regex.replace(~r/def test_backend do\n.*?\n  end\n/s, &1, fn body ->
        String.replace(body, "Nx.BinaryBackend", "EMLX.Backend")
      end)
    )
    |> then(
      &Regex.replace(
        ~r/Nx\.all_close\(((?:[^()]|\([^()]*\))*)\)\s*==\s*Nx\.tensor\(1, type: \{:u, 8\}\)/,
        &1,
        "Nx.to_number(Nx.all_close(\\1)) == 1"
      )
    )
  end

  defp deps(suite, mode) do
    deps_path = env!("EMLX_DEPS_PATH")
    libs = env!("LIBS_DIR")

    base =
      for name <- ~w(nx complex telemetry),
          do: {String.to_atom(name), path: Path.join(deps_path, name), override: true}

    libs_deps =
      for name <- @lib_deps[suite],
          do: {String.to_atom(name), path: Path.join(libs, name), override: true}

    emlx = if mode == "emlx", do: [{:emlx, path: env!("EMLX_ROOT")}], else: []
    base ++ libs_deps ++ emlx
  end

  defp nx_suite_mix(deps) do
    """
    defmodule NxSuite.MixProject do
      use Mix.Project

      def project do
        [
          app: :nx_suite,
          version: "0.1.0",
          elixir: "~> 1.17",
          elixirc_paths: ["test/support"],
          deps: #{inspect(deps)}
        ]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """
  end

  defp prelude(mode) do
    formatter = Path.join(env!("EMLX_ROOT"), "bench/libraries_formatter.exs")

    """
    # bench/libraries.sh (#{mode}): the result formatter. In mode emlx,
    # bench/libraries_run.exs makes EMLX the defaults once the test files are loaded.
    Code.require_file(#{inspect(formatter)})
    EMLXLibs.Formatter.install()
    # ---- upstream test_helper.exs ----
    """
  end

  ## reruns

  # A test that waited in vain for a message may have lost a race with the
  # load of the whole suite (its wait is 1 s): bench/libraries.sh runs such
  # EMLX-run failures again, alone. Prints the test files as a glob on the
  # first line, then "Module<TAB>test name" a line; nothing when none.
  defp reruns(base) do
    run = read_run(base)

    # (not those whose awaited message, in the mailbox, already tells the idiom)
    waited = fn %{state: s, class: c, detail: d} ->
      s == :failed and String.starts_with?(in_other_process(c || "", d), @waited)
    end

    tests = for {key, t} <- (run && run.tests) || %{}, waited.(t), do: {key, t.file}

    if tests != [] do
      files = tests |> Enum.map(&elem(&1, 1)) |> Enum.uniq()
      IO.puts(if match?([_], files), do: hd(files), else: "{#{Enum.join(files, ",")}}")
      for {{mod, name}, _} <- tests, do: IO.puts("#{mod}\t#{name}")
    end
  end

  ## summarize

  defp summarize(results_dir, md_path, json_path) do
    runs =
      for suite <- @suites, mode <- ["upstream", "emlx"], into: %{} do
        {{suite, mode}, read_run(Path.join(results_dir, "#{suite}-#{mode}"))}
      end

    suites = Enum.filter(@suites, fn s -> runs[{s, "upstream"}] || runs[{s, "emlx"}] end)
    rows = Enum.map(suites, &row(&1, runs))
    File.write!(json_path, JSON.encode!(%{generated: DateTime.utc_now(), suites: rows}) <> "\n")
    File.write!(md_path, markdown(rows))
    IO.puts(File.read!(md_path))
  end

  defp read_run(base) do
    file = base <> ".results"

    if File.exists?(file) do
      {:ok, terms} = :file.consult(String.to_charlist(file))
      meta = read_meta(base <> ".meta")

      tests =
        for {:test, mod, name, state, time, class, detail, file} <- terms, into: %{} do
          {{inspect(mod), to_string(name)},
           %{state: state, time: time, class: class, detail: detail, file: file}}
        end

      module_failures =
        for {:module_failed, mod, class, _} <- terms, do: %{module: inspect(mod), class: class}

      %{
        tests: tests,
        rerun: (read_run(base <> ".rerun") || %{tests: %{}}).tests,
        finished: Enum.any?(terms, &match?({:suite, :finished, _}, &1)),
        module_failures: module_failures,
        meta: meta
      }
    end
  end

  defp read_meta(path) do
    if File.exists?(path) do
      path
      |> File.read!()
      |> String.split("\n", trim: true)
      |> Map.new(fn line ->
        [k, v] = String.split(line, "=", parts: 2)
        {k, v}
      end)
    else
      %{}
    end
  end

  defp counts(nil), do: nil

  defp counts(run) do
    states = Enum.map(run.tests, fn {_, t} -> t.state end)
    ran = Enum.count(states, &(&1 in [:passed, :failed, :invalid]))

    %{
      passed: Enum.count(states, &(&1 == :passed)),
      failed: Enum.count(states, &(&1 in [:failed, :invalid])),
      ran: ran,
      finished: run.finished,
      seconds: run.meta["seconds"] && String.to_integer(run.meta["seconds"]),
      exit: run.meta["exit"],
      ref: run.meta["ref"],
      switched: run.meta["switched"],
      linalg: run.meta["linalg"],
      attr_files: run.meta["attr_files"] && String.to_integer(run.meta["attr_files"])
    }
  end

  defp row(suite, runs) do
    up = runs[{suite, "upstream"}]
    em = runs[{suite, "emlx"}]
    up_c = counts(up)
    em_c = counts(em)
    total = Enum.max([up_c && up_c.ran, em_c && em_c.ran] |> Enum.reject(&is_nil/1), fn -> 0 end)

    emlx_only =
      if up && em do
        for {key, %{state: s} = t} <- em.tests,
            s in [:failed, :invalid],
            match?(%{state: :passed}, up.tests[key]),
            do: Map.put(t, :test, elem(key, 0) <> " " <> elem(key, 1))
      else
        []
      end

    upstream_only =
      if up && em do
        for {key, %{state: s}} <- up.tests,
            s in [:failed, :invalid],
            match?(%{state: :passed}, em.tests[key]),
            do: elem(key, 0) <> " " <> elem(key, 1)
      else
        []
      end

    emlx_only =
      Enum.map(emlx_only, fn t ->
        t = %{t | class: Map.get(@checked_by_hand, t.test, t.class) |> in_other_process(t.detail)}
        alone(t, em.rerun)
      end)

    {idioms, rest} = Enum.split_with(emlx_only, &String.starts_with?(&1.class || "", "idiom:"))
    {documented, causes} = Enum.split_with(rest, &String.starts_with?(&1.class, @documented))

    %{
      suite: suite,
      total: total,
      upstream: up_c,
      emlx: em_c,
      emlx_only_failures: group(causes),
      documented_cases: group(documented, & &1),
      binary_backend_idioms: group(idioms),
      upstream_only_failures: Enum.sort(upstream_only)
    }
  end

  # A test that waited in vain for a message, run again alone (see reruns/1):
  # classified by that run, and named as such.
  defp alone(%{class: @waited <> _} = t, rerun) do
    [mod, name] = String.split(t.test, " ", parts: 2)

    case rerun[{mod, name}] do
      %{state: :passed} ->
        %{
          t
          | class:
              "timing: the awaited message came after the test's wait under the suite's load; passes alone"
        }

      %{state: :failed, class: class, detail: detail} ->
        %{
          t
          | class: in_other_process(class, detail),
            detail: detail,
            test: t.test <> " (its awaited message came late under load; classified as run alone)"
        }

      _ ->
        t
    end
  end

  defp alone(t, _rerun), do: t

  # A process the test watches died of the == idiom (an Nx.Serving's
  # process, whose assertion reaches the test as a :DOWN message).
  defp in_other_process(@waited <> _ = class, detail) do
    if detail =~ "{%ExUnit.AssertionError{left: #Nx.Tensor<" and
         detail =~ "message: \"Assertion with == failed\"",
       do: "idiom: == on tensor structs (in a process the test watches)",
       else: class
  end

  defp in_other_process(class, _detail), do: class

  defp group(failures, key \\ &normalize/1) do
    failures
    |> Enum.group_by(&key.(&1.class))
    |> Enum.map(fn {cause, list} ->
      tests = list |> Enum.map(& &1.test) |> Enum.sort()
      example = hd(Enum.sort_by(list, & &1.test)).detail
      %{cause: cause, count: length(list), tests: tests, example: example}
    end)
    |> Enum.sort_by(&{-&1.count, &1.cause})
  end

  # Numbers and references vary between otherwise equal messages.
  defp normalize(nil), do: "(none)"

  defp normalize(class) do
    class
    |> String.replace(~r/#Reference<[^>]*>/, "#Reference<...>")
    |> String.replace(~r/-?\d+(\.\d+)?(e-?\d+)?/, "N")
    |> String.slice(0, 160)
  end

  defp markdown(rows) do
    table =
      for r <- rows do
        "| #{r.suite} | #{cell(r.upstream, r.total)} | #{cell(r.emlx, r.total)} | " <>
          "#{Enum.sum(Enum.map(r.emlx_only_failures, & &1.count))} | " <>
          "#{Enum.sum(Enum.map(r.documented_cases, & &1.count))} | " <>
          "#{Enum.sum(Enum.map(r.binary_backend_idioms, & &1.count))} |"
      end

    details =
      for r <- rows do
        causes =
          for g <- r.emlx_only_failures do
            "- **#{g.count}** × `#{g.cause}`\n" <>
              Enum.map_join(Enum.take(g.tests, 8), "", &"  - #{&1}\n") <>
              if(g.count > 8, do: "  - … #{g.count - 8} more\n", else: "")
          end

        documented =
          for g <- r.documented_cases do
            "- **#{g.count}** × #{g.cause}\n" <> Enum.map_join(g.tests, "", &"  - #{&1}\n")
          end

        idioms =
          for g <- r.binary_backend_idioms do
            "- **#{g.count}** × `#{g.cause}`: " <>
              Enum.map_join(Enum.take(g.tests, 4), "; ", & &1) <>
              if(g.count > 4, do: "; …", else: "") <> "\n"
          end

        attrs =
          case r.emlx do
            %{attr_files: n} when is_integer(n) and n > 0 ->
              "#{n} test files put Nx tensors in module attributes (compiled on Nx.BinaryBackend).\n\n"

            _ ->
              ""
          end

        attrs =
          case r.emlx do
            %{linalg: "nx"} ->
              attrs <>
                "EMLX ran with `config :emlx, linalg: :nx` (Nx's own linear-algebra " <>
                "algorithms on MLX ops, not LAPACK's).\n\n"

            _ ->
              attrs
          end

        attrs =
          case r.emlx do
            %{switched: files} when files not in [nil, ""] ->
              attrs <>
                "Test support adapted on EMLX (`#{files}`): `test_backend/0` and " <>
                "`test_compiler/0`, which set each test's backend and compiler, return " <>
                "`EMLX.Backend` and `EMLX` instead of Nx.BinaryBackend and Nx.Defn.Evaluator; " <>
                "an assertion helper that compares `Nx.all_close/3`'s result to " <>
                "`Nx.tensor(1, type: {:u, 8})` with `==` compares the number.\n\n"

            _ ->
              attrs
          end

        """

        ### #{r.suite}

        #{attrs}Failing on EMLX only, by cause:

        #{if causes == [], do: "none\n", else: Enum.join(causes)}
        Documented precision and reference cases (failing on EMLX only; each
        checked by hand: EMLX's value is within a few ulps of the exact one,
        as Nx's is, or is the IEEE/C99 one that numpy and Python MLX give):

        #{if documented == [], do: "none\n", else: Enum.join(documented)}
        BinaryBackend-only test idioms (failing on EMLX only; not EMLX's):

        #{if idioms == [], do: "none\n", else: Enum.join(idioms)}
        #{if r.upstream_only_failures == [], do: "", else: "Failing upstream only: #{Enum.join(r.upstream_only_failures, "; ")}\n"}
        """
      end

    """
    # Nx libraries on EMLX

    Generated by `bash bench/libraries.sh` (see its header). Each suite ran
    twice: with its upstream defaults, and with `EMLX.Backend` as the global
    default backend and `EMLX` as the global default `defn` compiler, set
    once the test files are compiled (tensors in module attributes are then
    Nx.BinaryBackend tensors; with EMLX the default while compiling, a file
    with one does not compile: an MLX array cannot be escaped into code).
    "passed/total"; a run stopped by its time limit shows how many tests it
    reached. The last three columns count tests that pass upstream and fail
    on EMLX: for a cause that is EMLX's; for a documented precision or
    reference case (the test wants the last digits of Nx's own algorithm,
    or Nx.BinaryBackend's value where IEEE/C99 give another; each checked by
    hand, `bench/libraries_cases.exs`); or for a test idiom that holds only
    on Nx.BinaryBackend (tensor structs compared with `==`, structs holding
    them compared so, tensors of another backend captured by a `jit`
    closure). A test on EMLX that waited in vain for a message (1 s) ran
    again alone and is classified by that run, with a note by its name;
    the counts are the first run's.

    | suite | upstream defaults | on EMLX | EMLX-only failures | documented precision/reference | BinaryBackend idioms |
    |---|---|---|---|---|---|
    #{Enum.join(table, "\n")}
    #{Enum.join(details)}
    """
  end

  defp cell(nil, _total), do: "not run"

  defp cell(c, total) do
    base = "#{c.passed}/#{total}"
    time = if c.seconds, do: " (#{c.seconds} s)", else: ""

    if c.finished,
      do: base <> time,
      else: base <> time <> ", stopped after #{c.ran} tests (#{c.exit || "time limit"})"
  end
end

EMLXLibs.main(System.argv())
