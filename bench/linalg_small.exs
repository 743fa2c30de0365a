# Small-matrix linear algebra: one eager call after warm-up, median of 7
# runs, in µs, three ways on the same matrices (float32):
#
#   * EMLX with its default: Nx's own algorithms in Nx's rounding, on the
#     host, for matrices up to `config :emlx, :linalg_small` (16);
#   * EMLX with `linalg_small: 0`: MLX's LAPACK kernels at every size;
#   * Nx.BinaryBackend (Nx's algorithms in Elixir), as the reference.
#
#     mix run bench/linalg_small.exs            # prints the table
#     RESULT=bench/results/linalg_small.json mix run bench/linalg_small.exs
#
# Each call is forced (its results read back), so a row counts one whole
# decomposition as a user waits for it.

defmodule LinAlgSmallBench do
  @runs 7

  def time(fun) do
    fun.()
    fun.()

    for(_ <- 1..@runs, do: :timer.tc(fn -> force(fun.()) end) |> elem(0))
    |> Enum.sort()
    |> Enum.at(div(@runs, 2))
  end

  defp force(t) when is_tuple(t), do: t |> Tuple.to_list() |> Enum.each(&force/1)
  defp force(t), do: Nx.to_binary(t)

  def ops do
    [
      qr: &Nx.LinAlg.qr/1,
      lu: &Nx.LinAlg.lu/1,
      cholesky: &Nx.LinAlg.cholesky/1,
      solve: &Nx.LinAlg.solve(&1, Nx.sum(&1, axes: [1])),
      determinant: &Nx.LinAlg.determinant/1,
      eigh: &Nx.LinAlg.eigh/1,
      svd_thin: &Nx.LinAlg.svd(&1, full_matrices?: false),
      svd_full: &Nx.LinAlg.svd/1
    ]
  end

  # a symmetric positive definite n x n matrix (every op takes it)
  def matrix(n) do
    Nx.with_default_backend(Nx.BinaryBackend, fn ->
      {a, _} = Nx.Random.uniform(Nx.Random.key(n), shape: {n, n})
      a |> Nx.dot(Nx.transpose(a)) |> Nx.add(Nx.multiply(Nx.eye(n), n))
    end)
  end

  def row(n, {name, fun}) do
    m = matrix(n)
    on_emlx = Nx.backend_copy(m, EMLX.Backend)
    small = time(fn -> fun.(on_emlx) end)
    Application.put_env(:emlx, :linalg_small, 0)
    lapack = time(fn -> fun.(on_emlx) end)
    Application.delete_env(:emlx, :linalg_small)

    binary =
      if n <= 8 or name not in [:eigh, :svd_thin, :svd_full],
        do: Nx.with_default_backend(Nx.BinaryBackend, fn -> time(fn -> fun.(m) end) end),
        else: nil

    %{op: name, n: n, emlx_us: small, emlx_lapack_us: lapack, binary_backend_us: binary}
  end
end

rows = for n <- [3, 8, 16], op <- LinAlgSmallBench.ops(), do: LinAlgSmallBench.row(n, op)

IO.puts("| op | n | EMLX (Nx's algorithms) µs | EMLX (LAPACK) µs | Nx.BinaryBackend µs |")
IO.puts("| --- | --- | --- | --- | --- |")

for r <- rows do
  IO.puts(
    "| #{r.op} | #{r.n} | #{r.emlx_us} | #{r.emlx_lapack_us} | #{r.binary_backend_us || "-"} |"
  )
end

if path = System.get_env("RESULT") do
  File.write!(path, JSON.encode!(%{machine: "the 2-core Debian VM", rows: rows}))
end
