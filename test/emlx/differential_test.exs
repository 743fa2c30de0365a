defmodule EMLX.DifferentialTest do
  @moduledoc """
  Differential tests: every Nx op EMLX.Backend implements, run on seeded
  random inputs under EMLX.Backend and Nx.BinaryBackend, and compared
  (exactly for integers, within type tolerances for floats; NaN equals
  NaN, infinities equal). The case list is built from the tables in
  `test/support/differential/*_cases.ex` (`EMLX.Differential.Cases`);
  the machinery is in `test/support/differential.ex` (`EMLX.Differential`).

  Tolerances (rtol and atol, per output type): f16 1e-2, bf16 5e-2, f32 and
  c64 1e-5, f64 1e-12; tables loosen them per case where documented.

  Every case has an id such as `add s8{7,3} s8{7,3}` (function, then each
  argument: type, shape and input domain of tensors, or the literal); its
  inputs come from a seed derived from that id alone. To reproduce one,
  in `MIX_ENV=test mix run -e '...'` or `iex -S mix` with `MIX_ENV=test`:

      import EMLX.Differential, only: [t: 2, t: 3]
      c = EMLX.Differential.new_case({Nx, :add}, [t({:s, 8}, {7, 3}), t({:s, 8}, {7, 3})])
      EMLX.Differential.inputs(c)   # the inputs, on Nx.BinaryBackend
      EMLX.Differential.run(c)      # :ok or {:error, message}

  Each test runs one group of cases (named with its case count) and is
  tagged with it: `mix test test/emlx/differential_test.exs --only
  group:"binary add s8"`. After the suite a line sums up the cases run,
  passed, known failures and reference differences.

  Nx does not allow zero-sized dimensions (`{0, 3}` raises), so the odd
  shapes are `{}`, `{1}`, `{3, 1, 5}` and `{7, 3}`, plus what each table adds.
  """
  use ExUnit.Case, async: true
  # On the GPU, MLX compiles each new kernel at run time (NVRTC): first calls are slow.
  @moduletag timeout: 600_000

  alias EMLX.Differential, as: D

  ## ------------------------------------------------------------------
  ## Ops EMLX.Backend does not implement yet
  ## ------------------------------------------------------------------
  #
  # Op names (as in the case groups: :conv, :window_sum, :fft, :qr, ...).
  # Their cases run as "pending": a case passes when EMLX raises its
  # "does not implement" error, and must match Nx.BinaryBackend otherwise.
  # Remove an op from this list once it is implemented.
  #
  # Empty since commit 0b93b4c ("conv, window ops, reduce/window_reduce,
  # FFT, triangular_solve and Nx.LinAlg blocks on MLX"), which implemented
  # every op that was listed here: conv, window_sum, window_product,
  # window_max, window_min, window_scatter_max, window_scatter_min, reduce,
  # window_reduce, fft, ifft, triangular_solve, cholesky, qr, eigh, svd, lu,
  # determinant, solve. Their tables are below and run as regular cases.
  @not_implemented_yet []

  ## ------------------------------------------------------------------
  ## Known failures: EMLX bugs found by this suite
  ## ------------------------------------------------------------------
  #
  # Case id (exact) => reason. These cases must still FAIL: one that
  # passes makes its test fail with "remove it from @known_failures".
  # Each id reproduces on its own (see the moduledoc).

  @known_failures %{}

  # Cases where Nx.BinaryBackend itself is wrong and EMLX gives the
  # mathematically expected result (as EXLA does). Same rules as above.

  @acos_c "Nx.BinaryBackend (Complex.acos) returns -acos(z), outside the principal branch " <>
            "(real part in [0, π]); EMLX returns the principal value"
  @sign_c "Nx.BinaryBackend's sign returns 1 for every complex number; EMLX returns z/|z|"
  @sign_special "Nx.BinaryBackend's sign gives 1 for -Inf and NaN; EMLX gives -1 for -Inf " <>
                  "and 0 for NaN (EXLA gives NaN for NaN)"
  @tanh_inf "Nx.BinaryBackend's tanh gives NaN for ±Inf; EMLX gives ±1"
  @wscatter "Nx.BinaryBackend's window_scatter_max/min on f64 round the result to float32; " <>
              "EMLX keeps float64"

  @pad_type "Nx.pad gives the merged type of the tensor and the pad value as the output " <>
              "type; Nx.BinaryBackend ignores it and returns the tensor's type, EMLX honours it"
  @all_c_ref "Nx.BinaryBackend's all and any treat 0+0i as true (any([0+0i]) is 1); EMLX " <>
               "treats it as false, as logical_not does on both backends"

  @reference_differences %{
    "all c64{3,1,5}:bool []" => @all_c_ref,
    "all c64{3,1,5}:bool [axes:[-1]]" => @all_c_ref,
    "all c64{3,1,5}:bool [axes:[0,2],keep_axes:true]" => @all_c_ref,
    "all c64{3,1,5}:bool [axes:[0]]" => @all_c_ref,
    "all c64{7,3}:bool [axes:[1]]" => @all_c_ref,
    "all c64{7,3}:bool [keep_axes:true]" => @all_c_ref,
    "all c64{}:bool []" => @all_c_ref,
    "any c64{1}:bool [axes:[0]]" => @all_c_ref,
    "any c64{3,1,5}:bool [axes:[-1]]" => @all_c_ref,
    "any c64{3,1,5}:bool [axes:[0]]" => @all_c_ref,
    "any c64{}:bool []" => @all_c_ref,
    "pad s64{7,3} c64{} [{1,1,1},{0,-1,0}]" => @pad_type,
    "pad s8{7,3} f32{} [{1,1,1},{0,-1,0}]" => @pad_type,
    "pad u8{7,3} s8{} [{1,1,1},{0,-1,0}]" => @pad_type,
    "acos c64{1}:{:range,-1,1}" => @acos_c,
    "acos c64{3,1,5}:{:range,-1,1}" => @acos_c,
    "acos c64{7,3}:{:range,-1,1}" => @acos_c,
    "acos c64{}:{:range,-1,1}" => @acos_c,
    "sign bf16{7,3}:special" => @sign_special,
    "sign c64{1}" => @sign_c,
    "sign c64{3,1,5}" => @sign_c,
    "sign c64{7,3}" => @sign_c,
    "sign c64{}" => @sign_c,
    "sign f16{7,3}:special" => @sign_special,
    "sign f32{7,3}:special" => @sign_special,
    "sign f64{7,3}:special" => @sign_special,
    "tanh bf16{7,3}:special" => @tanh_inf,
    "tanh f16{7,3}:special" => @tanh_inf,
    "tanh f32{7,3}:special" => @tanh_inf,
    "tanh f64{7,3}:special" => @tanh_inf,
    "window_scatter_max f64{4,6} f64{2,2}:small f64{}:small {2,3} [strides:[2,3]]" => @wscatter,
    "window_scatter_max f64{7,3} f64{4,2}:small f64{}:small {2,2} [strides:[2,2],padding::same]" =>
      @wscatter,
    "window_scatter_max f64{7,3} f64{6,2}:small f64{}:small {2,2} [strides:[1,1]]" => @wscatter,
    "window_scatter_min f64{4,6} f64{2,2}:small f64{}:small {2,3} [strides:[2,3]]" => @wscatter,
    "window_scatter_min f64{7,3} f64{4,2}:small f64{}:small {2,2} [strides:[2,2],padding::same]" =>
      @wscatter,
    "window_scatter_min f64{7,3} f64{6,2}:small f64{}:small {2,2} [strides:[1,1]]" => @wscatter
  }

  ## ------------------------------------------------------------------
  ## Cases (test/support/differential/*_cases.ex)
  ## ------------------------------------------------------------------

  # Ops in @not_implemented_yet: their cases accept the not-implemented error.
  pending_names = Enum.map(@not_implemented_yet, &Atom.to_string/1)

  mark_pending = fn c ->
    %{c | pending: c.group |> String.split(" ") |> Enum.any?(&(&1 in pending_names))}
  end

  @cases Enum.map(D.Cases.all(), mark_pending)
  @min_cases 7000

  @doc "Every regular case (maps, see EMLX.Differential)."
  def cases, do: @cases

  ## ------------------------------------------------------------------
  ## Tests
  ## ------------------------------------------------------------------

  # Case tallies for the after-suite summary.
  @tally_key {__MODULE__, :tally}
  tally_key = @tally_key
  :persistent_term.put(tally_key, :counters.new(6, [:write_concurrency]))

  ExUnit.after_suite(fn _ ->
    c = :persistent_term.get(tally_key)
    [run, pass, known, reference, pending, bad] = Enum.map(1..6, &:counters.get(c, &1))

    if run > 0 do
      IO.puts(
        "\nEMLX differential: #{run} cases run, #{pass} passed, #{known} known failures, " <>
          "#{reference} reference differences, #{pending} pending (not implemented), " <>
          "#{bad} unexpected"
      )
    end
  end)

  defp known_failure(id) do
    case {Map.fetch(@known_failures, id), Map.fetch(@reference_differences, id)} do
      {{:ok, reason}, _} -> {:known_failures, reason}
      {_, {:ok, reason}} -> {:reference_differences, reason}
      _ -> nil
    end
  end

  defp check(cases) do
    tally = :persistent_term.get(@tally_key)

    problems =
      Enum.flat_map(cases, fn c ->
        result = D.run(c)
        :counters.add(tally, 1, 1)

        case {result, known_failure(c.id)} do
          {:ok, nil} ->
            :counters.add(tally, 2, 1)
            []

          {:ok, {list, reason}} ->
            :counters.add(tally, 6, 1)
            ["#{c.id}: passes now; remove it from @#{list} (#{reason})"]

          {{:error, _}, {:known_failures, _}} ->
            :counters.add(tally, 3, 1)
            []

          {{:error, _}, {:reference_differences, _}} ->
            :counters.add(tally, 4, 1)
            []

          {{:pending, _}, _} ->
            :counters.add(tally, 5, 1)
            []

          {{kind, msg}, _} when kind in [:error, :invalid] ->
            :counters.add(tally, 6, 1)
            ["[#{kind}] " <> msg]
        end
      end)

    assert cases != []

    assert problems == [],
           "#{length(problems)} of #{length(cases)} cases failed:\n\n" <>
             Enum.join(problems, "\n\n")
  end

  for {group, cases} <- Enum.group_by(@cases, & &1.group) do
    @tag group: group
    test "#{group} (#{length(cases)} cases)" do
      check(unquote(Macro.escape(cases)))
    end
  end

  test "the case list covers every family (#{length(@cases)} cases)" do
    assert length(@cases) >= @min_cases

    for family <- ~w(unary binary select clip as_type bitcast reshape pad slice put_slice
                     sum argmax cumulative_sum sort argsort dot gather indexed_add iota) do
      assert Enum.any?(@cases, &String.starts_with?(&1.group, family)),
             "no cases for #{family}"
    end

    ids = MapSet.new(@cases, & &1.id)

    for id <- Map.keys(@known_failures) ++ Map.keys(@reference_differences) do
      assert id in ids, "@known_failures or @reference_differences names an unknown case: #{id}"
    end
  end
end
