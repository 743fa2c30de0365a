# Nx's own doctests, run twice with EMLX.Backend as the default backend:
#
#   * EMLX.NxDoctestTest: eagerly, on the backend;
#   * EMLX.NxCompilerDoctestTest: with `compiler: EMLX` as the default defn
#     compiler (EXLA's pattern), so every `defn` inside Nx (Nx.LinAlg,
#     Nx.Random, ...) runs through EMLX's compiler.
#
# Each exclusion carries its reason (test/support/doctest_exclusions.ex), the
# same for both runs. Run with `EMLX_DOCTEST_ALL=1` to run every doctest,
# exclusions ignored, and count the failures.
for {module, compiler, doc} <- [
      {EMLX.NxDoctestTest, nil,
       "Nx's own doctests, run with EMLX.Backend as the default backend."},
      {EMLX.NxCompilerDoctestTest, EMLX,
       "Nx's doctests a second time, with `compiler: EMLX` as the default defn compiler."}
    ] do
  defmodule module do
    @moduledoc doc
    use ExUnit.Case, async: true

    @compiler compiler

    setup do
      Nx.default_backend({EMLX.Backend, device: EMLX.Case.device()})
      if @compiler, do: Nx.Defn.default_options(compiler: @compiler)
      :ok
    end

    if System.get_env("EMLX_DOCTEST_ALL") in [nil, ""] do
      doctest Nx, except: EMLX.DoctestExclusions.nx()
      doctest Nx.LinAlg, except: EMLX.DoctestExclusions.linalg()
      doctest Nx.Random, except: EMLX.DoctestExclusions.random()
    else
      doctest Nx
      doctest Nx.LinAlg
      doctest Nx.Random
    end
  end
end
