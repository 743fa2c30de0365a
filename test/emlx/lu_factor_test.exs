defmodule EMLX.LUFactorTest do
  @moduledoc """
  MLX 0.32's LU kernel gives its factor a data_size of its byte count, not
  its element count, and MLX's kernels walk contiguous arrays by data_size.
  Read straight, a 1x1 or batched factor made fused kernels and element-wise
  ops read and write 8 times past its buffer (float64): the heap corruption
  that the defn fuzzer found as VM crashes ("corrupted double-linked list")
  and AddressSanitizer as a heap-buffer-overflow in a fused kernel. EMLX
  copies the factor out before anything reads it (kernels_linalg.cpp,
  lu_factors). These tests take the shapes that hit it, many times over, so
  that a regression corrupts the heap where it shows; under
  `make asan-test` with MLX's fused kernels built with AddressSanitizer
  (README, Robustness) one call is enough.
  """
  use EMLX.Case, async: true

  @reps 60

  defp ref(t), do: Nx.backend_copy(t, Nx.BinaryBackend)

  defp assert_all_close(got, want, opts) do
    opts = Keyword.merge([atol: 0.0, rtol: 0.0], opts)

    assert Nx.all_close(got, want, opts) |> Nx.to_number() == 1,
           "#{inspect(got)} != #{inspect(want)}"
  end

  defp matrices(type) do
    for shape <- [{1, 1}, {2, 1, 1}, {3, 3}, {2, 3, 3}, {5, 5}] do
      u = Nx.iota(shape, type: type, backend: Nx.BinaryBackend) |> Nx.multiply(0.37) |> Nx.sin()
      n = elem(shape, tuple_size(shape) - 1)
      # diagonally dominant: well conditioned
      Nx.add(u, Nx.multiply(Nx.eye(n, type: type, backend: Nx.BinaryBackend), n + 1))
    end
  end

  for type <- [:f32, :f64] do
    test "solve, lu and determinant of 1x1, batched and square factors (#{type})" do
      for _ <- 1..@reps, a <- matrices(unquote(type)) do
        b =
          Nx.iota(put_elem(a.shape, tuple_size(a.shape) - 1, 1),
            type: unquote(type),
            backend: Nx.BinaryBackend
          )

        on = &Nx.backend_copy(&1, EMLX.Backend)

        x = Nx.LinAlg.solve(on.(a), on.(b))
        assert_all_close(ref(matmul(on.(a), x)), b, atol: 1.0e-4)

        if tuple_size(a.shape) == 2 do
          {p, l, u} = Nx.LinAlg.lu(on.(a))
          assert_all_close(ref(p |> Nx.dot(l) |> Nx.dot(u)), a, atol: 1.0e-4)
        end

        assert_all_close(ref(Nx.LinAlg.determinant(on.(a))), Nx.LinAlg.determinant(a),
          rtol: 1.0e-4
        )
      end
    end
  end

  # a matrix product, batched over a leading axis
  defp matmul(a, x) when tuple_size(a.shape) == 3, do: Nx.dot(a, [2], [0], x, [1], [0])
  defp matmul(a, x), do: Nx.dot(a, x)

  test "a compiled cond whose branch solves a 1x1 system (the fuzzer's program)" do
    f = fn x -> Nx.LinAlg.invert(Nx.add(Nx.outer(x, x), Nx.eye(1, type: :f64))) end
    fused = Nx.Defn.jit(f, compiler: EMLX, fuse: true)
    replayed = Nx.Defn.jit(f, compiler: EMLX, fuse: false)

    for i <- 1..@reps do
      v = i / @reps
      x = Nx.tensor([v], type: :f64, backend: EMLX.Backend)
      want = Nx.tensor([[1 / (1 + v * v)]], type: :f64)
      assert_all_close(ref(fused.(x)), want, atol: 1.0e-12)
      assert_all_close(ref(replayed.(x)), want, atol: 1.0e-12)
    end
  end
end
