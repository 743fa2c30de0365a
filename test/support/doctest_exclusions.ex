defmodule EMLX.DoctestExclusions do
  @moduledoc """
  The Nx doctests left out of the conformance runs, each with its reason.
  Used by `EMLX.NxDoctestTest` and `EMLX.NxCompilerDoctestTest`
  (test/emlx/nx_doctest_test.exs).
  """

  @excluded [
    # Nx's float64 erf_inv is a float32-accurate approximation: EMLX gives
    # the float64 value (erf_inv(0.1) = 0.08885599049425769, Nx
    # 0.08885598780483887). Re-tested in test/emlx/precision_test.exs.
    erf_inv: 1
  ]

  # Nx.LinAlg: the full SVD (full_matrices?: true) is MLX's LAPACK kernel:
  # results equal up to float32 rounding (last digits). Re-tested in
  # test/emlx/precision_test.exs by its defining property. (Small float32
  # QR, LU, eigh, Cholesky, solve, determinant and thin SVD are Nx's own
  # algorithms in Nx's rounding, and pass: test/emlx/linalg_small_test.exs.)
  @linalg_excluded [svd: 2]
  # On the GPU the dots around the kernels (matrix_power's, P.L.U in lu's
  # example, the thin SVD's under pinv and least_squares) are MLX's float32
  # GEMM, in another order than Nx's double accumulation: last digits.
  @linalg_excluded_gpu [svd: 2, lu: 1, matrix_power: 2, pinv: 2, least_squares: 3]

  # Nx.Random.normal's draws are Nx's bit for bit on the CPU (float32
  # erf_inv is Nx's approximation, in double; test/emlx/precision_test.exs),
  # and so is the mean of 1,000 draws that one example prints (small float32
  # sums accumulate in double there, as Nx.BinaryBackend's do). On the GPU,
  # float32 erf_inv is MLX's, which differs from Nx's in the last digit, and
  # the mean's sum is MLX's float32 reduction, in another order.
  @random_excluded []
  @random_excluded_gpu [normal: 4, multivariate_normal: 4]

  # On the GPU, float32 exp and log are MLX's CUDA ones, which differ from
  # Nx's (computed in double and rounded once, as EMLX does on the CPU) in
  # the last digit: logsumexp's examples print it.
  @excluded_gpu [erf_inv: 1, logsumexp: 2]

  @doc "Excluded from `doctest Nx`."
  def nx, do: if(EMLX.Case.device() == :gpu, do: @excluded_gpu, else: @excluded)
  @doc "Excluded from `doctest Nx.LinAlg`."
  def linalg,
    do: if(EMLX.Case.device() == :gpu, do: @linalg_excluded_gpu, else: @linalg_excluded)

  @doc "Excluded from `doctest Nx.Random`."
  def random,
    do: if(EMLX.Case.device() == :gpu, do: @random_excluded_gpu, else: @random_excluded)
end
