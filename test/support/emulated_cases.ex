defmodule EMLX.EmulatedCases do
  @moduledoc """
  Case tables and inputs for test/emlx/emulated_types_test.exs: the types
  MLX lacks (c128, f8, f8_e4m3fn, u2, u4, s2, s4), which EMLX.Backend
  computes with Nx.BinaryBackend's implementation. Every result is checked
  against Nx.BinaryBackend bit for bit.
  """

  import ExUnit.Assertions

  @doc "Unary c128 functions (name, function), results compared bit for bit."
  def c128_unary do
    [
      exp: &Nx.exp/1,
      log: &Nx.log/1,
      sqrt: &Nx.sqrt/1,
      sin: &Nx.sin/1,
      cos: &Nx.cos/1,
      tanh: &Nx.tanh/1,
      abs: &Nx.abs/1,
      conjugate: &Nx.conjugate/1,
      real: &Nx.real/1,
      imag: &Nx.imag/1,
      phase: &Nx.phase/1,
      negate: &Nx.negate/1,
      sign: &Nx.sign/1,
      is_nan: &Nx.is_nan/1
    ]
  end

  @doc "Binary c128 functions (name, function)."
  def c128_binary do
    [
      add: &Nx.add/2,
      subtract: &Nx.subtract/2,
      multiply: &Nx.multiply/2,
      divide: &Nx.divide/2,
      pow: &Nx.pow/2,
      equal: &Nx.equal/2
    ]
  end

  @doc "Complex values with inexact decimal parts, signs and a zero, as a {3, 4} list."
  def c128_values do
    [
      [
        Complex.new(0.1, 0.2),
        Complex.new(-1.5, 2.25),
        Complex.new(3.0, -0.7),
        Complex.new(0.0, 0.0)
      ],
      [
        Complex.new(1.0e-3, 7.0),
        Complex.new(2.5, 0.0),
        Complex.new(-0.3, -0.4),
        Complex.new(9.0, 1.1)
      ],
      [
        Complex.new(0.7, -2.0),
        Complex.new(-4.0, 0.5),
        Complex.new(1.25, 1.25),
        Complex.new(-0.01, 3.3)
      ]
    ]
  end

  @doc """
  Complex values with small integer parts, as a {3, 4} list: their products
  and sums are exact in float64, so any order of summation gives the same
  bits (EMLX's c128 dot sums in BLAS's order).
  """
  def c128_int_values do
    [
      [Complex.new(1, 2), Complex.new(-3, 0), Complex.new(4, -1), Complex.new(0, 5)],
      [Complex.new(2, 2), Complex.new(0, -7), Complex.new(-6, 3), Complex.new(1, 1)],
      [Complex.new(-2, 9), Complex.new(8, 0), Complex.new(3, -3), Complex.new(-1, -4)]
    ]
  end

  @doc "Values for each 8-bit float type: exact ones, ones that round, and specials."
  def f8_values({:f, 8}), do: [0.0, 1.5, -3.0, 0.1, 100.0, 1.0e-3, 57_344.0, -0.5]
  def f8_values({:f8_e4m3fn, 8}), do: [0.0, 1.5, -3.0, 0.1, 100.0, 1.0e-3, 448.0, -0.5]

  @doc "Every value of a sub-byte integer type, in an order that is not sorted."
  def subbyte_values({:u, 2}), do: [3, 0, 2, 1, 1]
  def subbyte_values({:u, 4}), do: [15, 0, 7, 8, 1, 14, 3]
  def subbyte_values({:s, 2}), do: [-2, 1, 0, -1, 1]
  def subbyte_values({:s, 4}), do: [-8, 7, 0, -1, 5, -3, 2]

  @doc "The sub-byte integer types."
  def subbyte_types, do: [{:u, 2}, {:u, 4}, {:s, 2}, {:s, 4}]

  @doc "The 8-bit float types."
  def f8_types, do: [{:f, 8}, {:f8_e4m3fn, 8}]

  @doc """
  Checks that `got` (on EMLX.Backend) equals `want` (on Nx.BinaryBackend)
  bit for bit, with its shape and type; any container of tensors.
  """
  def assert_bits(got, want) do
    got = Nx.Defn.Composite.flatten_list([got])
    want = Nx.Defn.Composite.flatten_list([want])
    assert length(got) == length(want)

    Enum.zip_with(got, want, fn g, w ->
      assert %EMLX.Backend{} = g.data
      assert g.shape == w.shape, "shape #{inspect(g.shape)} != #{inspect(w.shape)}"
      assert g.type == w.type, "type #{inspect(g.type)} != #{inspect(w.type)}"
      assert g.names == w.names

      assert Nx.to_binary(g) == Nx.to_binary(w),
             "#{inspect(g)} differs from Nx.BinaryBackend's #{inspect(w)}"
    end)

    :ok
  end

  @doc """
  Runs `fun` on `inputs` (Nx.BinaryBackend tensors) on EMLX.Backend (the
  inputs copied to `device`) and on Nx.BinaryBackend, and checks the
  results bit for bit.
  """
  def assert_emulated(fun, inputs, device) do
    backend = {EMLX.Backend, device: device}
    emlx_inputs = Enum.map(inputs, &copy(&1, backend))
    got = Nx.with_default_backend(backend, fn -> apply(fun, emlx_inputs) end)
    want = Nx.with_default_backend(Nx.BinaryBackend, fn -> apply(fun, inputs) end)
    assert_bits(got, want)
    got
  end

  defp copy(%Nx.Tensor{} = t, backend), do: Nx.backend_copy(t, backend)
  defp copy(other, _backend), do: other
end

defmodule EMLX.EmulatedCases.Defns do
  @moduledoc "defn functions over emulated types (test/emlx/emulated_types_test.exs)."
  import Nx.Defn

  @doc "An f64 input through a c128 loop state and a cond on the result."
  defn c128_loop(x) do
    z = Nx.complex(x, x * 0.5)

    {_, acc, _} =
      while {i = 0, acc = z, z}, i < 3 do
        {i + 1, acc * z + 1, z}
      end

    out = Nx.sum(Nx.real(acc))

    if out > 0 do
      out
    else
      -out
    end
  end
end
