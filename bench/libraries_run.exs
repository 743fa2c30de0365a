# Runs a library's test suite for bench/libraries.sh, in its copy:
#
#     MIX_ENV=test mix run /path/to/emlx/bench/libraries_run.exs upstream|emlx
#
# What `mix test` does, in two steps: every test file is compiled and
# loaded first, then the suite runs. In mode `emlx`, EMLX becomes the
# global default backend and defn compiler between the two: test files
# compile as they do upstream (a tensor in a module attribute is a
# Nx.BinaryBackend tensor, as in a project that picks its backend at run
# time; were EMLX the default while compiling, such a file would not
# compile, since an MLX array cannot be escaped into code), and every test
# runs with EMLX as the default.
#
# Environment: LIBS_SEED (default 0), LIBS_MAX_CASES (default 2),
# LIBS_FILES (default test/**/*_test.exs: a glob of the test files to run,
# to look into a few by hand), LIBS_ONLY_TESTS (below) and LIBS_EMLX_LINALG
# (nx: EMLX runs `config :emlx, linalg: :nx`).

[mode] = System.argv()

# The test helper's ExUnit.start/1 must not schedule a run at exit.
ExUnit.start(autorun: false)
Code.require_file("test/test_helper.exs")

ExUnit.configure(
  seed: String.to_integer(System.get_env("LIBS_SEED", "0")),
  max_cases: String.to_integer(System.get_env("LIBS_MAX_CASES", "2"))
)

files = System.get_env("LIBS_FILES", "test/**/*_test.exs") |> Path.wildcard() |> Enum.sort()

# LIBS_ONLY_TESTS: a file of "Module<TAB>test name" lines (bench/libraries.sh's
# reruns): only those tests run.
case System.get_env("LIBS_ONLY_TESTS") do
  nil ->
    :ok

  list ->
    names =
      for line <- File.read!(list) |> String.split("\n", trim: true),
          [_mod, name] = String.split(line, "\t", parts: 2),
          do: {:test, name}

    ExUnit.configure(exclude: [:test], include: names)
end

case Kernel.ParallelCompiler.require(files, return_diagnostics: true) do
  {:ok, _modules, _} -> :ok
  {:error, errors, _} -> raise "test files did not compile: #{inspect(errors, limit: 5)}"
end

if mode == "emlx" do
  {:ok, _} = Application.ensure_all_started(:emlx)
  Nx.global_default_backend(EMLX.Backend)
  # LIBS_EMLX_LINALG=nx: `config :emlx, linalg: :nx` (Nx's own algorithms)
  if System.get_env("LIBS_EMLX_LINALG") == "nx", do: Application.put_env(:emlx, :linalg, :nx)
  Nx.Defn.global_default_options(compiler: EMLX)
end

%{failures: failures} = ExUnit.run()
System.halt(if failures > 0, do: 2, else: 0)
