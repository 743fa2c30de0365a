defmodule EMLX.ComplexNonFiniteTest do
  @moduledoc """
  Complex functions at arguments with an infinite or NaN part give what
  Nx's Complex formulas give (Nx.BinaryBackend), not C99's Annex G values
  that MLX gives: Nx's own non-finite tests check them at inf + 3i.
  """
  use EMLX.Case, async: true

  @special [:nan, :infinity, :neg_infinity, 0.0, -0.0, 1.5, -2.0]
  @values for re <- @special, im <- @special, do: Complex.new(re, im)
  @unary [:tanh, :acos, :asin, :atan, :atanh, :acosh, :asinh]

  defp non_finite?(%Complex{re: re, im: im}), do: not (is_number(re) and is_number(im))

  defp same?(a, b) when is_number(a) and is_number(b),
    do: abs(a - b) <= 1.0e-6 * max(1.0, abs(b))

  defp same?(a, b), do: a == b

  # the indices where got and want differ, among those of `keep`
  defp differing(got, want, keep) do
    [Nx.to_flat_list(got), Nx.to_flat_list(want), keep]
    |> Enum.zip()
    |> Enum.filter(fn {g, w, k} ->
      k and
        not (same?(Complex.real(g), Complex.real(w)) and same?(Complex.imag(g), Complex.imag(w)))
    end)
  end

  defp ref(t), do: Nx.backend_copy(t, Nx.BinaryBackend)

  test "Nx's values at inf + 3i (Nx's non-finite tests)" do
    z = emlx(Complex.new(:infinity, 3))
    nan_nan = Complex.new(:nan, :nan)

    for f <- [:tanh, :acos, :asin, :atan, :atanh],
        do: assert(Nx.to_number(apply(Nx, f, [z])) == nan_nan, "#{f}")

    for f <- [:acosh, :asinh] do
      %Complex{re: re, im: im} = Nx.to_number(apply(Nx, f, [z]))
      assert re == :infinity and pi_4?(im), "#{f}"
    end

    assert Nx.to_number(Nx.pow(z, emlx(Complex.new(-2, 4)))) == nan_nan
  end

  defp pi_4?(im), do: abs(im - :math.pi() / 4) < 1.0e-6

  test "every argument with a non-finite part gives Nx.BinaryBackend's value, eager and compiled" do
    x = emlx(@values, type: :c64)
    keep = Enum.map(@values, &non_finite?/1)

    for f <- @unary do
      want = apply(Nx, f, [ref(x)])
      assert differing(apply(Nx, f, [x]), want, keep) == [], "#{f}"
      jit = Nx.Defn.jit(&apply(Nx, f, [&1]), compiler: EMLX)
      assert differing(jit.(x), want, keep) == [], "#{f}, compiled"
    end

    # pow: a non-finite base or exponent, and 0 ** 0 = 1
    y = Nx.reverse(x)
    zero = Complex.new(0.0, 0.0)

    keep =
      Enum.zip_with(@values, Enum.reverse(@values), fn a, b ->
        non_finite?(a) or non_finite?(b) or (a == zero and b == zero)
      end)

    assert differing(Nx.pow(x, y), Nx.pow(ref(x), ref(y)), keep) == []
  end

  test "finite arguments keep MLX's principal values" do
    x = emlx([Complex.new(0.3, -0.7), Complex.new(2.0, 1.0), Complex.new(-0.5, 0.25)])
    keep = List.duplicate(true, 3)
    assert differing(Nx.tanh(x), Nx.tanh(ref(x)), keep) == []

    # each inverse undoes its function
    for {inv, fun} <- [
          acos: :cos,
          asin: :sin,
          atan: :tan,
          atanh: :tanh,
          acosh: :cosh,
          asinh: :sinh
        ] do
      back = apply(Nx, fun, [apply(Nx, inv, [x])])
      assert Nx.all_close(back, x, atol: 1.0e-5) |> Nx.to_number() == 1, "#{fun}(#{inv}(z))"
    end

    # acos's real part is in [0, pi] (Complex's formula -i log(z + sqrt(z^2 - 1))
    # gives the other branch, -1.325 - 0.670i at 0.3 - 0.7i)
    re = x |> Nx.acos() |> Nx.real() |> Nx.to_flat_list()
    assert Enum.all?(re, &(&1 >= 0 and &1 <= :math.pi()))
  end
end
