defmodule EMLX.NxDoctestTest do
  @moduledoc """
  Nx's own doctests, run with EMLX.Backend as the default backend.

  Each exclusion carries its reason (test/support/doctest_exclusions.ex). Run with `EMLX_DOCTEST_ALL=1` to run
  every doctest, exclusions ignored, and count the failures.
  """
  use ExUnit.Case, async: true

  setup do
    Nx.default_backend({EMLX.Backend, device: :cpu})
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
