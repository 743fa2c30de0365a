defmodule EMLX.NxDoctestTest do
  @moduledoc """
  Nx's own doctests, run with EMLX.Backend as the default backend.

  Each exclusion carries its reason. Run with `EMLX_DOCTEST_ALL=1` to run
  every doctest, exclusions ignored, and count the failures.
  """
  use ExUnit.Case, async: true

  setup do
    Nx.default_backend({EMLX.Backend, device: :cpu})
    :ok
  end

  @excluded [
    # MLX has no f8, f8_e4m3fn or sub-byte integer types: these examples
    # build such tensors, and EMLX raises naming the type instead.
    tensor: 2,
    bit_size: 1,
    # MLX's CPU kernels for these functions compute float64 inputs with
    # float32-accurate approximations, so the f64 examples differ after
    # about the 8th digit (their f32 examples pass; see backend_test.exs).
    sin: 1,
    cos: 1,
    exp: 1,
    erf: 1,
    erfc: 1,
    erf_inv: 1,
    sigmoid: 1,
    log1p: 1,
    # Callbacks EMLX.Backend does not implement yet: each raises naming itself.
    conv: 3,
    reduce: 4,
    window_reduce: 5,
    window_sum: 3,
    window_mean: 3,
    window_product: 3,
    window_max: 3,
    window_min: 3,
    window_scatter_max: 5,
    window_scatter_min: 5,
    fft: 2,
    ifft: 2,
    fft2: 2,
    ifft2: 2,
    rfft: 2,
    irfft: 2
  ]

  if System.get_env("EMLX_DOCTEST_ALL") in [nil, ""] do
    doctest Nx, except: @excluded
  else
    doctest Nx
  end
end
