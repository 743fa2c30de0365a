defmodule EMLX.Differential.Inputs do
  @moduledoc """
  The seeded inputs of a differential case (see `EMLX.Differential`):
  tensors on `Nx.BinaryBackend` built from argument specs, each from
  `:rand` in `:exsss` mode seeded with `{seed, argument_index, 3}`.
  """

  import EMLX.Differential, only: [class: 1]

  @doc "The case's arguments on Nx.BinaryBackend."
  def inputs(%{args: args, seed: seed}) do
    {args, _} = Enum.map_reduce(args, 1, &build(&1, &2, seed))
    args
  end

  defp build({:t, type, shape, domain}, k, seed) do
    st = :rand.seed_s(:exsss, {seed, k, 3})
    size = Tuple.product(shape)
    values = values(domain, type, shape, size, st)

    t =
      case shape do
        {} -> Nx.tensor(hd(values), type: type, backend: Nx.BinaryBackend)
        _ -> values |> Nx.tensor(type: type, backend: Nx.BinaryBackend) |> Nx.reshape(shape)
      end

    {t, k + 1}
  end

  defp build({:list, specs}, k, seed), do: Enum.map_reduce(specs, k, &build(&1, &2, seed))
  defp build({:fun, mod, name, arity}, k, _seed), do: {Function.capture(mod, name, arity), k}
  defp build(other, k, _seed), do: {other, k}

  # Whole-tensor domains first, then element-wise sampling.
  defp values({:values, list}, _type, _shape, size, _st),
    do: list |> Stream.cycle() |> Enum.take(size)

  defp values({:unique_index, dims}, _type, {n, k}, _size, st) do
    k == length(dims) || raise ArgumentError, "{:unique_index, dims} needs shape {n, #{k}}"
    all = dims |> Enum.map(&Enum.to_list(0..(&1 - 1))) |> cartesian()

    {keyed, _} =
      Enum.map_reduce(all, st, fn row, st ->
        {r, st} = :rand.uniform_s(st)
        {{r, row}, st}
      end)

    keyed |> Enum.sort() |> Enum.take(n) |> Enum.flat_map(&elem(&1, 1))
  end

  defp values({:index_rows, dims}, _type, shape, size, st) do
    k = length(dims)
    elem(shape, tuple_size(shape) - 1) == k || raise ArgumentError, "last axis must be #{k}"
    bounds = dims |> Stream.cycle() |> Enum.take(size)
    {vals, _} = Enum.map_reduce(bounds, st, fn d, st -> rand_int(0, d - 1, st) end)
    vals
  end

  defp values({:spd, n}, type, _shape, _size, st) do
    # m·mᵀ + n·I: symmetric positive definite, well conditioned.
    {m, _} = Enum.map_reduce(1..(n * n), st, fn _, st -> uniform(-1.0, 1.0, st) end)
    rows = Enum.chunk_every(m, n)

    for i <- 0..(n - 1), j <- 0..(n - 1) do
      ri = Enum.at(rows, i)
      rj = Enum.at(rows, j)
      dot = Enum.zip_with(ri, rj, &(&1 * &2)) |> Enum.sum()
      v = if i == j, do: dot + n, else: dot
      if class(type) == :c, do: Complex.new(v, 0.0), else: v
    end
  end

  defp values({:lower, n}, _type, _shape, _size, st) do
    # Lower triangular with a dominant diagonal.
    {vals, _} =
      Enum.map_reduce(for(i <- 0..(n - 1), j <- 0..(n - 1), do: {i, j}), st, fn
        {i, i}, st -> uniform(2.0, 4.0, st)
        {i, j}, st when j < i -> uniform(-1.0, 1.0, st)
        _, st -> {0.0, st}
      end)

    vals
  end

  defp values({:upper, n}, type, shape, size, st) do
    # The transpose of {:lower, n}.
    values({:lower, n}, type, shape, size, st)
    |> Enum.chunk_every(n)
    |> Enum.zip_with(& &1)
    |> List.flatten()
  end

  defp values(domain, type, _shape, size, st) do
    {vals, _} = Enum.map_reduce(1..size//1, st, fn _, st -> sample(domain, type, st) end)
    vals
  end

  defp cartesian([]), do: [[]]
  defp cartesian([h | t]), do: for(x <- h, rest <- cartesian(t), do: [x | rest])

  @doc """
  One value of `type` from `domain`:

    * `:any` - integers over the whole type range (extremes, 0 and -1
      often); floats in [-10, 10]; complex parts in [-3, 3]
    * `:small` - integers in [-10, 10] (unsigned [0, 10]); floats in [-4, 4]
    * `:positive`, `:nonzero` - as named, small magnitudes
    * `{:range, lo, hi}` - floats uniform in [lo, hi]; integers in it
    * `:halves` - multiples of 0.5 in [-6, 6] (rounding ties)
    * `:special` - floats mixing NaN, ±Inf, ±0.0 with [-10, 10]
    * `:ties` - integers in [0, 3] (as floats too): many equal elements
    * `:ties_nan` - `:ties` with NaN and ±Inf for floats
    * `:bool` - mostly 0 and 1, some other non-zero values
    * `{:ints, lo, hi}` - integers in [lo, hi] whatever the type
    * `:shift` - shift amounts in [0, bits - 1]
    * `:pow_base`, `:pow_exp` - bases and exponents that keep pow defined
    * `{:cast, target}` - finite values in range of both the type and `target`
    * `:wide` - integers up to 2^(bits/2 - 2) (dot products exact in the type)
  """
  def sample(domain, {:c, _}, st) when domain not in [:bool, :ties] do
    {re, st} = sample(domain, {:f, 32}, st)
    {im, st} = sample(complex_im(domain), {:f, 32}, st)
    {Complex.new(re, im), st}
  end

  def sample(:bool, {:c, _}, st) do
    {v, st} = pick([0, 0, 1, Complex.new(0.0, 1.0)], st)
    {if(is_integer(v), do: Complex.new(v * 1.0, 0.0), else: v), st}
  end

  def sample(:ties, {:c, _}, st) do
    {re, st} = rand_int(0, 1, st)
    {im, st} = rand_int(0, 1, st)
    {Complex.new(re * 1.0, im * 1.0), st}
  end

  def sample(domain, type, st) do
    if class(type) == :f, do: float(domain, type, st), else: int(domain, type, st)
  end

  defp complex_im({:cast, _}), do: {:range, -3, 3}
  defp complex_im(:positive), do: {:range, -3, 3}
  defp complex_im(:special), do: :any
  defp complex_im(:nonzero), do: {:range, -3, 3}
  defp complex_im(d), do: d

  defp int(:any, type, st) do
    {lo, hi} = int_range(type)

    case :rand.uniform_s(8, st) do
      {1, st} -> pick(Enum.filter([lo, hi, 0, -1, 1], &(&1 in lo..hi)), st)
      {_, st} -> rand_int(lo, hi, st)
    end
  end

  defp int(:small, type, st), do: int({:range, -10, 10}, type, st)
  defp int(:special, type, st), do: int(:any, type, st)
  defp int(:positive, type, st), do: int({:range, 1, 20}, type, st)
  defp int(:halves, type, st), do: int({:range, -6, 6}, type, st)
  defp int(:ties, type, st), do: int({:range, 0, 3}, type, st)
  defp int(:ties_nan, type, st), do: int({:range, 0, 3}, type, st)

  # Non-zero (0 to a negative or complex power has no agreed value).
  defp int(:pow_base, type, st), do: signed({:range, 1, 6}, type, st)

  defp int(:pow_exp, type, st), do: int({:range, 0, 5}, type, st)
  defp int({:ints, lo, hi}, _type, st), do: rand_int(lo, hi, st)
  defp int(:shift, {_, bits}, st), do: rand_int(0, bits - 1, st)

  defp int(:nonzero, type, st), do: signed({:range, 1, 20}, type, st)

  defp int(:bool, type, st) do
    {lo, _} = int_range(type)
    pick(if(lo < 0, do: [0, 0, 1, 1, 2, -1], else: [0, 0, 1, 1, 2, 7]), st)
  end

  defp int(:wide, {_, bits} = type, st) do
    {lo, _} = int_range(type)
    m = Integer.pow(2, div(bits, 2) - 2)
    rand_int(if(lo < 0, do: -m, else: 0), m, st)
  end

  defp int({:cast, target}, type, st) do
    {lo, hi} = intersect(int_range(type), target_range(target))
    rand_int(lo, hi, st)
  end

  defp int({:range, lo, hi}, type, st) do
    {tlo, thi} = int_range(type)
    {lo, hi} = intersect({tlo, thi}, {ceil(lo), floor(hi)})
    rand_int(lo, hi, st)
  end

  # A value of `range`, negated half the time where the type is signed.
  defp signed(range, type, st) do
    {v, st} = int(range, type, st)
    {neg, st} = :rand.uniform_s(2, st)
    {lo, _} = int_range(type)
    {if(neg == 1 and lo < 0, do: -v, else: v), st}
  end

  defp float(:any, _type, st), do: uniform(-10.0, 10.0, st)
  defp float(:small, _type, st), do: uniform(-4.0, 4.0, st)
  defp float(:positive, _type, st), do: uniform(0.1, 10.0, st)
  defp float(:pow_base, _type, st), do: uniform(0.1, 4.0, st)
  defp float(:pow_exp, _type, st), do: uniform(-3.0, 3.0, st)
  defp float({:ints, lo, hi}, _type, st), do: rand_int(lo, hi, st)
  defp float(:wide, type, st), do: float(:any, type, st)
  defp float({:range, lo, hi}, _type, st), do: uniform(lo * 1.0, hi * 1.0, st)

  defp float(:nonzero, _type, st) do
    {v, st} = uniform(0.5, 10.0, st)
    {neg, st} = :rand.uniform_s(2, st)
    {if(neg == 1, do: -v, else: v), st}
  end

  defp float(:halves, _type, st) do
    {k, st} = rand_int(-12, 12, st)
    {k / 2, st}
  end

  defp float(:special, type, st) do
    case :rand.uniform_s(2, st) do
      {1, st} -> pick([:nan, :infinity, :neg_infinity, 0.0, -0.0, 1.0, -1.0], st)
      {_, st} -> float(:any, type, st)
    end
  end

  defp float(:ties, _type, st) do
    {k, st} = rand_int(0, 3, st)
    {k * 1.0, st}
  end

  defp float(:ties_nan, type, st) do
    case :rand.uniform_s(5, st) do
      {1, st} -> pick([:nan, :infinity, :neg_infinity], st)
      {_, st} -> float(:ties, type, st)
    end
  end

  defp float(:bool, _type, st), do: pick([0.0, 0.0, 1.0, 1.0, -2.5, 0.5], st)

  defp float({:cast, target}, _type, st) do
    # Finite, in range of the target, at most 1.0e4 in magnitude (so
    # float16 and int16 targets hold it); 0.9 so that rounding to a
    # narrow source type (bf16) cannot leave the range.
    {lo, hi} = intersect({-1.0e4, 1.0e4}, target_range(target))
    uniform(lo * 0.9, hi * 0.9, st)
  end

  defp target_range({k, _} = t) when k in [:u, :s], do: int_range(t)
  defp target_range(_), do: {-1.0e4, 1.0e4}

  defp intersect({a, b}, {c, d}), do: {max(a, c), min(b, d)}

  @doc "The range of an integer type."
  def int_range({:u, bits}), do: {0, Integer.pow(2, bits) - 1}
  def int_range({:s, bits}), do: {-Integer.pow(2, bits - 1), Integer.pow(2, bits - 1) - 1}

  defp rand_int(lo, hi, st) when is_float(lo) or is_float(hi),
    do: rand_int(ceil(lo), floor(hi), st)

  defp rand_int(lo, hi, st) when hi < lo, do: {max(lo, 0), st}

  defp rand_int(lo, hi, st) do
    {r, st} = :rand.uniform_s(hi - lo + 1, st)
    {lo + r - 1, st}
  end

  defp uniform(lo, hi, st) do
    {r, st} = :rand.uniform_s(st)
    {lo + r * (hi - lo), st}
  end

  defp pick(list, st) do
    {i, st} = :rand.uniform_s(length(list), st)
    {Enum.at(list, i - 1), st}
  end
end
