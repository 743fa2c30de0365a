defmodule EMLX.NxCompilerDoctestTest do
  @moduledoc """
  Nx's doctests a second time, with `compiler: EMLX` as the default defn
  compiler (EXLA's pattern): every `defn` inside Nx (Nx.LinAlg, Nx.Random,
  ...) runs through EMLX's compiler. The exclusions are those of
  `EMLX.DoctestExclusions`, for the same reasons.
  """
  use ExUnit.Case, async: true

  setup do
    Nx.default_backend({EMLX.Backend, device: :cpu})
    Nx.Defn.default_options(compiler: EMLX)
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
