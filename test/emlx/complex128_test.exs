defmodule EMLX.Complex128Test do
  @moduledoc """
  c128 on MLX in float64 pairs and over its bytes (EMLX.Backend.Complex128):
  the callbacks that take that path, compared with Nx.BinaryBackend bit for
  bit (special values, random values), but a dot of inexact values (float64
  rounding in BLAS's order); which callbacks take it; the float64 overflow;
  and that each result is an array of its own.
  """
  use EMLX.Case, async: true

  import EMLX.EmulatedCases

  defp bin(data, type), do: Nx.tensor(data, type: type, backend: Nx.BinaryBackend)

  defp c128, do: bin(c128_values(), :c128)

  # the one-operand callbacks Complex128 runs on MLX
  @unary [
    &Nx.negate/1,
    &Nx.conjugate/1,
    &Nx.real/1,
    &Nx.imag/1,
    &Nx.abs/1,
    &Nx.exp/1,
    &Nx.log/1,
    &Nx.sqrt/1,
    &Nx.sin/1,
    &Nx.cos/1
  ]

  test "arithmetic on MLX's float64 pairs gives Nx.BinaryBackend's bits for infinities, NaN and signed zeros" do
    special = [:nan, :infinity, :neg_infinity, 0.0, -0.0, 1.5, -2.0]
    values = for re <- special, im <- special, do: Complex.new(re, im)
    x = bin(values, :c128)
    y = Nx.reverse(x)
    z = bin(Enum.shuffle(values), :c128)

    for fun <- [&Nx.add/2, &Nx.subtract/2, &Nx.multiply/2, &Nx.equal/2, &Nx.not_equal/2] do
      assert_emulated(fun, [x, y], device())
      assert_emulated(fun, [x, z], device())
      assert_emulated(fun, [x, Nx.as_type(z, :c64)], device())
    end

    # divide, zero divisors included: their numerator is zero too (each of
    # its terms has a part of the divisor), and Complex's 0/0 is NaN
    assert_emulated(&Nx.divide/2, [x, y], device())
    assert_emulated(&Nx.divide/2, [x, z], device())
    assert_emulated(&Nx.divide/2, [x, Nx.as_type(z, :c64)], device())

    # as_type to c128 from c64 and real types, specials included
    reals = bin([:nan, :infinity, :neg_infinity, 0.0, -0.0, 1.5, 1.0e-310, -3.0e38], :f64)
    assert_emulated(&Nx.as_type(&1, :c128), [reals], device())
    assert_emulated(&Nx.as_type(&1, :c128), [Nx.as_type(reals, :f32)], device())
    assert_emulated(&Nx.as_type(&1, :c128), [Nx.as_type(reals, :bf16)], device())
    assert_emulated(&Nx.as_type(&1, :c128), [Nx.as_type(x, :c64)], device())
    assert_emulated(&Nx.as_type(&1, :c128), [bin([-7, 0, 2_000_000_000], :s32)], device())
    assert_emulated(&Nx.as_type(&1, :c128), [bin([0, 255], :u8)], device())

    # a NaN part equals a NaN part there, as Complex structs compare
    assert_emulated(&Nx.equal(&1, &1), [x], device())
    assert_emulated(&Nx.not_equal(&1, &1), [x], device())

    for fun <- @unary, do: assert_emulated(fun, [x], device())

    # abs's branches (a zero part, the larger part first or second, -0.0
    # kept as Erlang's abs keeps it) and a sum with infinities and NaN
    y =
      bin([Complex.new(-0.0, -0.0), Complex.new(3.0, -4.0), Complex.new(-1.0e-300, 2.0)], :c128)

    assert_emulated(&Nx.abs/1, [y], device())
    assert_emulated(&Nx.sum(&1, axes: [0]), [Nx.reshape(x, {7, 7})], device())
    assert_emulated(&Nx.select(Nx.greater(Nx.real(&1), 0), &1, &2), [x, z], device())
  end

  test "float64 pairs on MLX give Nx.BinaryBackend's bits over 2,000 random values" do
    {r, _} =
      Nx.with_default_backend(Nx.BinaryBackend, fn ->
        Nx.Random.uniform(Nx.Random.key(11), -60.0, 60.0, shape: {4, 2000}, type: :f64)
      end)

    x = Nx.complex(r[0], r[1])
    y = Nx.complex(r[2], r[3])

    for fun <- [&Nx.add/2, &Nx.subtract/2, &Nx.multiply/2, &Nx.divide/2, &Nx.equal/2] do
      assert_emulated(fun, [x, y], device())
    end

    for fun <- @unary, do: assert_emulated(fun, [x], device())
  end

  test "a float64 overflow gives IEEE's infinity, where Nx.BinaryBackend raises Erlang's ArithmeticError" do
    a = bin([Complex.new(1.0e200, 1.0)], :c128)
    assert_raise ArithmeticError, fn -> Nx.multiply(a, a) end

    got =
      Nx.multiply(
        Nx.backend_copy(a, {EMLX.Backend, device: device()}),
        Nx.backend_copy(a, {EMLX.Backend, device: device()})
      )

    assert Nx.to_binary(got) == Nx.to_binary(bin([Complex.new(:infinity, 2.0e200)], :c128))
  end

  test "a c128 result is its own array: deallocating its input leaves it" do
    for fun <- [&Nx.reshape(&1, {4, 3}), &Nx.transpose/1, &Nx.negate/1, &Nx.squeeze(&1[0..0])] do
      x = emlx(c128_values(), type: :c128)
      want = Nx.to_binary(Nx.with_default_backend(Nx.BinaryBackend, fn -> fun.(c128()) end))
      y = fun.(x)
      Nx.backend_deallocate(x)
      assert Nx.to_binary(y) == want
      assert_raise ArgumentError, ~r/deallocated/, fn -> Nx.to_binary(x) end
    end
  end

  test "which c128 callbacks run on MLX's float64 pairs" do
    alias EMLX.Backend.Complex128
    x = emlx(c128_values(), type: :c128)
    f32 = emlx([[0.5, -1.0, 2.0, 3.0]], type: :f32)
    out = %{x | data: nil}
    assert Complex128.native?(:add, [out, x, x])
    assert Complex128.native?(:multiply, [out, x, Nx.as_type(x, :c64)])
    assert Complex128.native?(:negate, [out, x])
    assert Complex128.native?(:real, [%{out | type: {:f, 64}}, x])

    assert Complex128.native?(:dot, [
             %{out | shape: {3, 3}},
             x,
             [1],
             [],
             Nx.transpose(x),
             [0],
             []
           ])

    assert Complex128.native?(:dot, [
             %{out | shape: {3, 1}},
             x,
             [1],
             [],
             Nx.transpose(f32),
             [0],
             []
           ])

    # a real operand of add, subtract or multiply, an s64 dot operand, and
    # what Complex128 leaves alone: Nx.BinaryBackend's implementation
    refute Complex128.native?(:add, [out, x, f32])

    refute Complex128.native?(:dot, [
             %{out | shape: {3, 1}},
             x,
             [1],
             [],
             Nx.iota({4, 1}, type: :s64),
             [0],
             []
           ])

    assert Complex128.native?(:sin, [out, x])
    refute Complex128.native?(:tanh, [out, x])
    # past 2^31 bytes (MLX's dimensions are 32-bit)
    big = %{out | shape: {46_340, 46_340}}
    refute Complex128.native?(:negate, [big, %{x | shape: {46_340, 46_340}}])
    assert Complex128.native?(:divide, [out, x, x])
    refute Complex128.native?(:divide, [out, x, f32])
    refute Complex128.native?(:add, [out, x, Nx.backend_copy(x, Nx.BinaryBackend)])

    assert Complex128.native?(:abs, [%{out | type: {:f, 64}}, x])
    assert Complex128.native?(:exp, [out, x])
    assert Complex128.native?(:log, [out, x])
    assert Complex128.native?(:sqrt, [out, x])
    assert Complex128.native?(:as_type, [out, Nx.as_type(x, :c64)])
    assert Complex128.native?(:as_type, [%{out | shape: {1, 4}}, f32])
    refute Complex128.native?(:as_type, [out, Nx.iota({3, 4}, type: :s64)])
    assert Complex128.native?(:equal, [%{out | type: {:u, 8}}, x, Nx.as_type(x, :c64)])
    refute Complex128.native?(:equal, [%{out | type: {:u, 8}}, x, f32])
    assert Complex128.native?(:sum, [%{out | shape: {}}, x, [axes: [0, 1], keep_axes: false]])
    assert Complex128.native?(:select, [out, emlx(1, type: :u8), x, x])
    refute Complex128.native?(:select, [out, emlx(1, type: :u8), x, Nx.as_type(x, :c64)])

    # whole elements moved on a uint8 view
    t = %{out | shape: {4, 3}}
    assert Complex128.native?(:transpose, [t, x, [1, 0]])
    assert Complex128.native?(:reshape, [t, x])
    assert Complex128.native?(:slice, [%{out | shape: {1, 2}}, x, [emlx(1), 0], [1, 2], [1, 1]])
    assert Complex128.native?(:put_slice, [out, x, [0, 0], x])
    assert Complex128.native?(:concatenate, [%{out | shape: {6, 4}}, [x, x], 0])
    refute Complex128.native?(:put_slice, [out, x, [0, 0], Nx.as_type(x, :c64)])

    refute Complex128.native?(:concatenate, [
             %{out | shape: {6, 4}},
             [x, Nx.as_type(x, :c64)],
             0
           ])
  end

  test "dot of exact products equals Nx.BinaryBackend, with c128, c64, f64 and s32 operands" do
    z = bin(c128_int_values(), :c128)
    assert_emulated(&Nx.dot(&1, Nx.transpose(&1)), [z], device())
    assert_emulated(&Nx.dot(&1, [1], &2, [0]), [z, Nx.transpose(z)], device())
    assert_emulated(&Nx.dot(&1, [0], [], &2, [0], []), [z, Nx.conjugate(z)], device())
    assert_emulated(&Nx.dot(&1, &2), [z, Nx.transpose(Nx.as_type(z, :c64))], device())
    assert_emulated(&Nx.dot(&1, &2), [Nx.as_type(z, :c64), Nx.transpose(z)], device())
    ints = bin([[1, -2, 3], [4, 0, -6], [7, 8, 9], [-1, 1, 2]], :s32)
    assert_emulated(&Nx.dot(&1, &2), [z, ints], device())
    assert_emulated(&Nx.dot(&1, &2), [Nx.transpose(ints), Nx.transpose(z)], device())
    assert_emulated(&Nx.dot(&1, &2), [z, Nx.as_type(ints, :f64)], device())

    # batched: {2, 3, 4} . {2, 4, 3}
    b = Nx.stack([z, Nx.negate(z)])

    assert_emulated(
      &Nx.dot(&1, [2], [0], &2, [1], [0]),
      [b, Nx.transpose(b, axes: [0, 2, 1])],
      device()
    )
  end

  test "dot of inexact values: float64 rounding of Nx.BinaryBackend's sums" do
    {parts, _} =
      Nx.with_default_backend(Nx.BinaryBackend, fn ->
        Nx.Random.normal(Nx.Random.key(7), shape: {2, 48, 40}, type: :f64)
      end)

    x = Nx.complex(parts[0], parts[1])
    y = Nx.transpose(Nx.multiply(x, Complex.new(0.5, -0.25)))
    want = Nx.dot(x, y)

    got =
      Nx.dot(
        Nx.backend_copy(x, {EMLX.Backend, device: device()}),
        Nx.backend_copy(y, {EMLX.Backend, device: device()})
      )

    assert got.type == {:c, 128} and got.shape == {48, 48}
    assert %EMLX.Backend{device: dev} = got.data
    assert dev == device()
    got = Nx.backend_copy(got, Nx.BinaryBackend)
    scale = want |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
    err = Nx.subtract(got, want) |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
    assert err <= scale * 1.0e-14, "max error #{err} against entries up to #{scale}"

    # the inexact decimals of c128_values/0
    x = c128()
    want = Nx.dot(x, Nx.transpose(x))

    got =
      Nx.dot(
        Nx.backend_copy(x, {EMLX.Backend, device: device()}),
        Nx.transpose(Nx.backend_copy(x, {EMLX.Backend, device: device()}))
      )

    close =
      Nx.all_close(Nx.backend_copy(got, Nx.BinaryBackend), want, rtol: 1.0e-15, atol: 1.0e-15)

    assert Nx.to_number(close) == 1
  end
end
