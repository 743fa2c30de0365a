defmodule EMLX.LinAlgSmallTest do
  @moduledoc """
  Small float32 (and integer) matrices: QR, LU, Cholesky, solve and
  determinant are Nx's own algorithms in Nx's rounding, so EMLX's answers
  are Nx.BinaryBackend's bit for bit (issue 14: Nx's LinAlg doctests print
  those digits). Larger matrices, and `config :emlx, linalg_small: 0`, keep
  LAPACK. Not async: two tests change the application environment.
  """
  use EMLX.Case, async: false

  defp random(shape, seed) do
    Nx.with_default_backend(Nx.BinaryBackend, fn ->
      {t, _} = Nx.Random.normal(Nx.Random.key(32 + seed), shape: shape)
      t
    end)
  end

  defp spd(n, seed) do
    a = random({n, n}, seed)
    a |> Nx.dot(Nx.transpose(a)) |> Nx.add(Nx.eye(n, backend: Nx.BinaryBackend))
  end

  # f over args on EMLX and on Nx.BinaryBackend: {got, want}, each a list
  # of the result's tensors
  defp both(f, args) do
    want = Nx.with_default_backend(Nx.BinaryBackend, fn -> apply(f, args) end)
    got = apply(f, Enum.map(args, &Nx.backend_copy(&1, EMLX.Backend)))
    {tuple_list(got), tuple_list(want)}
  end

  defp tuple_list(t) when is_tuple(t), do: Tuple.to_list(t)
  defp tuple_list(t), do: [t]

  defp bytes(list), do: Enum.map(list, &(&1 |> to_bin() |> Nx.to_binary()))

  defp assert_bitwise(name, f, args) do
    {got, want} = both(f, args)

    assert bytes(got) == bytes(want),
           "#{inspect(name)} on #{inspect(Enum.map(args, & &1.shape))} differs from Nx's"
  end

  # A composition of Nx ops around the kernels (matrix_power's dots, the
  # thin SVD): bit for bit on the CPU, where small float32 dots accumulate
  # in double as Nx's do; on the GPU the dots are MLX's float32 GEMM, equal
  # up to float32 rounding.
  defp assert_composed(name, f, args) do
    if EMLX.Case.device() == :gpu,
      do: assert_close(name, f, args, 1.0e-4),
      else: assert_bitwise(name, f, args)
  end

  defp assert_close(name, f, args, tol) do
    {got, want} = both(f, args)

    for {g, w} <- Enum.zip(got, want) do
      assert Nx.all_close(to_bin(g), w, rtol: tol, atol: tol) |> Nx.to_number() == 1,
             "#{inspect(name)} is not close to Nx's"
    end
  end

  test "QR, LU, Cholesky, solve, determinant, invert and matrix_power are Nx's, bit for bit" do
    for n <- [1, 2, 3, 4, 5, 8, 16] do
      a = random({n, n}, n)
      b = random({n, 3}, 100 + n)

      assert_bitwise(:cholesky, &Nx.LinAlg.cholesky/1, [spd(n, 200 + n)])
      assert_bitwise(:lu, &Nx.LinAlg.lu/1, [a])
      assert_bitwise(:qr, &Nx.LinAlg.qr/1, [a])
      assert_bitwise(:solve, &Nx.LinAlg.solve/2, [a, b])
      assert_bitwise(:solve_vector, &Nx.LinAlg.solve/2, [a, b[[.., 0]]])
      assert_bitwise(:determinant, &Nx.LinAlg.determinant/1, [a])
      assert_bitwise(:invert, &Nx.LinAlg.invert/1, [a])
      assert_composed(:matrix_power, &Nx.LinAlg.matrix_power(&1, -2), [a])
    end
  end

  test "eigh, the thin SVD, pinv and least_squares are Nx's, bit for bit" do
    for n <- [1, 2, 3, 4, 5, 8, 16] do
      a = random({n, n}, 300 + n)
      sym = Nx.add(a, Nx.transpose(a))
      assert_bitwise(:eigh, &Nx.LinAlg.eigh/1, [sym])
      # (Nx.BinaryBackend's own thin SVD of this 16x16 divides by zero)
      if n <= 8, do: assert_composed(:svd_thin, &Nx.LinAlg.svd(&1, full_matrices?: false), [a])
    end

    # repeated eigenvalues: Nx's basis of the eigenspace, not another one
    assert_bitwise(:eigh_repeated, &Nx.LinAlg.eigh/1, [
      Nx.tensor([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    ])

    tall = random({5, 3}, 400)
    assert_composed(:svd_thin_tall, &Nx.LinAlg.svd(&1, full_matrices?: false), [tall])

    assert_composed(:svd_thin_wide, &Nx.LinAlg.svd(&1, full_matrices?: false), [
      Nx.transpose(tall)
    ])

    assert_composed(:pinv, &Nx.LinAlg.pinv/1, [tall])
    assert_composed(:least_squares, &Nx.LinAlg.least_squares/2, [tall, random({5}, 401)])
  end

  test "tall and wide QR, reduced and complete" do
    for {m, n} <- [{3, 2}, {4, 3}, {6, 2}, {2, 3}, {3, 5}, {16, 9}],
        mode <- [:reduced, :complete] do
      assert_bitwise({:qr, mode}, &Nx.LinAlg.qr(&1, mode: mode), [random({m, n}, m * 10 + n)])
    end
  end

  test "integer matrices, closed-form determinants in the integer type, batches" do
    ints = Nx.tensor([[[2, 4, 6, 7], [5, 1, 8, 8], [1, 7, 3, 1], [3, 9, 2, 4]]], type: :s32)
    assert_bitwise(:determinant, &Nx.LinAlg.determinant/1, [ints])
    assert_bitwise(:solve, &Nx.LinAlg.solve/2, [ints[0], Nx.tensor([1, 2, 3, 4])])
    assert_bitwise(:lu, &Nx.LinAlg.lu/1, [ints])

    for n <- [2, 3], type <- [:s8, :s32, :u8, :s64] do
      t = Nx.iota({2, n, n}, type: type) |> Nx.multiply(7) |> Nx.remainder(11)
      assert_bitwise({:determinant, type}, &Nx.LinAlg.determinant/1, [t])
    end

    # s8 products wrap as Nx's do: 100 * 100 - 3 * 3 in s8
    wrap = Nx.tensor([[100, 3], [3, 100]], type: :s8)
    assert_bitwise(:determinant_wraps, &Nx.LinAlg.determinant/1, [wrap])

    f32 = Nx.tensor([[1.5, 2.25], [3.125, -4.0]]) |> Nx.multiply(1.1)
    assert_bitwise(:determinant_f32, &Nx.LinAlg.determinant/1, [f32])

    batch = Nx.stack([random({3, 3}, 1), random({3, 3}, 2)])
    assert_bitwise(:qr_batch, &Nx.LinAlg.qr/1, [batch])
    assert_bitwise(:cholesky_batch, &Nx.LinAlg.cholesky/1, [Nx.stack([spd(3, 3), spd(3, 4)])])

    vec = Nx.vectorize(Nx.stack([spd(2, 5), spd(2, 6)]), :x)
    assert_bitwise(:cholesky_vectorized, &Nx.LinAlg.cholesky/1, [vec])
  end

  test "Nx's doctest values, and inside a compiled defn" do
    a = emlx([[[2.0, 3.0], [3.0, 5.0]], [[1.0, 0.0], [0.0, 1.0]]])

    assert Nx.to_list(Nx.LinAlg.cholesky(a)) == [
             [[1.4142135381698608, 0.0], [2.1213204860687256, 0.7071064710617065]],
             [[1.0, 0.0], [0.0, 1.0]]
           ]

    {_q, r} =
      Nx.LinAlg.qr(emlx([[3.0, 2.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))

    assert Nx.to_list(r) |> List.last() |> List.last() == 1.4142136573791504

    m = emlx([[1, 3, 2, 1], [2, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])
    x = Nx.LinAlg.solve(m, emlx([-3, 0, 4, -2]))
    assert Nx.to_list(x) == [1.0, -2.0, 3.000000238418579, -4.0]

    jit =
      Nx.Defn.jit(fn m, b -> {Nx.LinAlg.solve(m, b), Nx.LinAlg.determinant(m)} end,
        compiler: EMLX
      )

    {xj, dj} = jit.(m, emlx([-3.0, 0.0, 4.0, -2.0]))
    assert Nx.to_list(xj) == Nx.to_list(x)
    assert Nx.to_number(dj) == Nx.to_number(Nx.LinAlg.determinant(m))
  end

  test "a singular system raises as Nx's does; a non-PD matrix's Cholesky gives NaN" do
    singular = emlx([[1.0, 2.0], [2.0, 4.0]])

    assert_raise ArgumentError, ~r/can't solve for singular matrix/, fn ->
      singular |> Nx.LinAlg.solve(emlx([1.0, 1.0])) |> Nx.to_list()
    end

    assert Nx.LinAlg.determinant(singular) |> Nx.to_number() == 0.0

    [[1.0, +0.0], [2.0, last]] =
      Nx.LinAlg.cholesky(emlx([[1.0, 2.0], [2.0, 1.0]])) |> Nx.to_list()

    assert last == :nan
  end

  test "the solve kernel takes only a right side of a's batch (checked in the shim)" do
    queue = EMLX.Application.default_worker(EMLX.Case.device())
    {_, a} = EMLX.Backend.from_nx(emlx(Nx.to_list(Nx.add(Nx.iota({2, 3, 3}), Nx.eye(3)))))
    {_, b} = EMLX.Backend.from_nx(emlx(Nx.to_list(Nx.iota({3, 3, 2}))))

    assert_raise ArgumentError, ~r/solve: b does not match a/, fn ->
      ref = EMLX.NIF.op(queue, :nx_solve, [a, b], nil)
      {EMLX.Case.device(), ref} |> EMLX.Backend.to_nx() |> Nx.to_list()
    end
  end

  test "past the size, and with linalg_small: 0, LAPACK answers (close to Nx's)" do
    a = random({17, 17}, 17)
    spd17 = spd(17, 18)

    check = fn ->
      assert_close(:cholesky, &Nx.LinAlg.cholesky/1, [spd17], 1.0e-4)
      assert_close(:solve, &Nx.LinAlg.solve/2, [spd17, a], 1.0e-3)
      assert_close(:determinant, &Nx.LinAlg.determinant/1, [spd(4, 5)], 1.0e-4)

      {q, r} = Nx.LinAlg.qr(Nx.backend_copy(a, EMLX.Backend))
      assert Nx.all_close(to_bin(Nx.dot(q, r)), a, atol: 1.0e-4) |> Nx.to_number() == 1
    end

    check.()
    Application.put_env(:emlx, :linalg_small, 0)

    try do
      check.()
      # the QR sign rule of the LAPACK path (kernels_linalg.cpp's nx_signs)
      t = Nx.tensor([[-2.0, 1.0, 0.0], [0.0, -1.0, 2.0], [0.0, 3.0, 1.0]])
      {got_q, got_r} = Nx.LinAlg.qr(Nx.backend_copy(t, EMLX.Backend))
      {want_q, want_r} = Nx.with_default_backend(Nx.BinaryBackend, fn -> Nx.LinAlg.qr(t) end)
      assert Nx.all_close(to_bin(got_q), want_q, atol: 1.0e-5) |> Nx.to_number() == 1
      assert Nx.all_close(to_bin(got_r), want_r, atol: 1.0e-5) |> Nx.to_number() == 1
    after
      Application.delete_env(:emlx, :linalg_small)
    end
  end
end
