defmodule EMLX.DefnFuzz.Extra do
  @moduledoc """
  More step kinds for `EMLX.DefnFuzz.Gen` programs, generated and run here
  (`{:extra, name, ...}` steps): clip, stable argsort, top_k's values,
  take_along_axis, logical ops, is_nan/is_infinity, tile, stack, strided
  slices, bitcasts and window_scatter_max/min.

  As in `EMLX.DefnFuzz.Gen`, a step names earlier values by index and says
  whether its result is *exact* (computed without rounding), and discrete
  results (orders, indices, predicates) only come from exact values, so
  near-ties cannot flip.
  """

  import EMLX.DefnFuzz.Gen, only: [pick: 2, float?: 1, int?: 1, complex?: 1]

  @kinds ~w(clip argsort top_k take_along logical is_nan tile stack strided bitcast window_scatter)a

  @doc "A random extra step for the generator's state, or nil."
  def step(st), do: gen(Enum.random(@kinds), st)

  defp gen(:clip, st) do
    with {i, v} <- pick(st, &(real?(&1) and not bool_like?(&1))) do
      {lo, hi} = if int?(v), do: {-2, 3}, else: {-0.75, 1.25}
      {{:extra, :clip, i, lo, hi}, [v]}
    end
  end

  defp gen(:argsort, st) do
    with {i, v} <- pick(st, &(&1.x and real?(&1) and rank(&1) > 0)) do
      axis = Enum.random(0..(rank(v) - 1))
      dir = Enum.random([:asc, :desc])
      {{:extra, :argsort, i, axis, dir}, [%{v | t: {:s, 64}, x: true}]}
    end
  end

  defp gen(:top_k, st) do
    with {i, v} <- pick(st, &(&1.x and real?(&1) and rank(&1) > 0)) do
      k = Enum.random(1..elem(v.s, rank(v) - 1))
      {{:extra, :top_k, i, k}, [%{v | s: put_elem(v.s, rank(v) - 1, k)}]}
    end
  end

  defp gen(:take_along, st) do
    with {i, v} <- pick(st, &(rank(&1) > 0)) do
      axis = Enum.random(0..(rank(v) - 1))
      {{:extra, :take_along, i, axis, Enum.random(1..7)}, [v]}
    end
  end

  defp gen(:logical, st) do
    with {i, a} <- pick(st, &(&1.x and real?(&1))),
         {j, _b} <- pick(st, &(&1.x and real?(&1) and &1.s == a.s)) do
      name = Enum.random([:logical_and, :logical_or, :logical_xor])
      {{:extra, :logical, name, i, j}, [%{a | t: {:u, 8}, x: true}]}
    end
  end

  defp gen(:is_nan, st) do
    with {i, v} <- pick(st, &(float?(&1) or complex?(&1))) do
      {{:extra, Enum.random([:is_nan, :is_infinity]), i}, [%{v | t: {:u, 8}, x: true}]}
    end
  end

  defp gen(:tile, st) do
    with {i, v} <- pick(st, &(rank(&1) in 1..3 and size(&1) <= 60)) do
      reps = for _ <- 1..rank(v), do: Enum.random(1..2)
      s = v.s |> Tuple.to_list() |> Enum.zip_with(reps, &(&1 * &2)) |> List.to_tuple()
      {{:extra, :tile, i, reps}, [%{v | s: s}]}
    end
  end

  defp gen(:stack, st) do
    with {i, a} <- pick(st, &(rank(&1) < 4)),
         {j, _b} <- pick(st, &(&1.s == a.s and &1.t == a.t)) do
      axis = Enum.random(0..rank(a))
      s = a.s |> Tuple.to_list() |> List.insert_at(axis, 2) |> List.to_tuple()
      {{:extra, :stack, i, j, axis}, [%{a | s: s, x: a.x}]}
    end
  end

  defp gen(:strided, st) do
    with {i, v} <- pick(st, &(rank(&1) > 0)) do
      dims = Tuple.to_list(v.s)
      starts = Enum.map(dims, &Enum.random(0..(&1 - 1)))
      lengths = Enum.zip_with(dims, starts, &Enum.random(1..(&1 - &2)))
      strides = Enum.map(dims, fn _ -> Enum.random(1..3) end)
      s = Enum.zip_with(lengths, strides, &div(&1 + &2 - 1, &2)) |> List.to_tuple()
      {{:extra, :strided, i, starts, lengths, strides}, [%{v | s: s}]}
    end
  end

  # (an exact value's bits, as integers; any other value's bits and back)
  defp gen(:bitcast, st) do
    with {i, v} <- pick(st, &(&1.t in [{:f, 32}, {:f, 64}])) do
      int = {:s, elem(v.t, 1)}
      {{:extra, :bitcast, i, int, v.x}, [if(v.x, do: %{v | t: int}, else: v)]}
    end
  end

  # (not float64: Nx.BinaryBackend, the reference, adds the scattered
  # values with Nx.add on plain numbers, float32 tensors, so its float64
  # results are float32-rounded; EMLX's are not)
  defp gen(:window_scatter, st) do
    with {i, v} <- pick(st, &(&1.x and float?(&1) and &1.t != {:f, 64} and rank(&1) in 1..3)),
         {j, _} <- pick(st, &(float?(&1) and &1.t == v.t)) do
      window = for d <- Tuple.to_list(v.s), do: Enum.random(1..min(d, 2))
      name = Enum.random([:window_scatter_max, :window_scatter_min])
      {{:extra, name, i, j, window}, [%{v | x: false}]}
    end
  end

  @doc "Runs an extra step over the values so far (a tuple)."
  def op({:extra, :clip, i, lo, hi}, v), do: Nx.clip(elem(v, i), lo, hi)

  def op({:extra, :argsort, i, axis, dir}, v),
    do: Nx.argsort(elem(v, i), axis: axis, direction: dir, stable: true, type: :s64)

  def op({:extra, :top_k, i, k}, v), do: elem(Nx.top_k(elem(v, i), k: k), 0)

  def op({:extra, :take_along, i, axis, mult}, v) do
    t = elem(v, i)
    n = elem(t.shape, axis)
    idx = Nx.iota(t.shape, axis: axis) |> Nx.multiply(mult) |> Nx.add(1) |> Nx.remainder(n)
    Nx.take_along_axis(t, idx, axis: axis)
  end

  def op({:extra, :logical, name, i, j}, v), do: apply(Nx, name, [elem(v, i), elem(v, j)])
  def op({:extra, :is_nan, i}, v), do: Nx.is_nan(elem(v, i))
  def op({:extra, :is_infinity, i}, v), do: Nx.is_infinity(elem(v, i))
  def op({:extra, :tile, i, reps}, v), do: Nx.tile(elem(v, i), reps)
  def op({:extra, :stack, i, j, axis}, v), do: Nx.stack([elem(v, i), elem(v, j)], axis: axis)

  def op({:extra, :strided, i, starts, lengths, strides}, v),
    do: Nx.slice(elem(v, i), starts, lengths, strides: strides)

  def op({:extra, :bitcast, i, int, true}, v), do: Nx.bitcast(elem(v, i), int)

  def op({:extra, :bitcast, i, int, false}, v) do
    t = elem(v, i)
    t |> Nx.bitcast(int) |> Nx.bitcast(t.type)
  end

  def op({:extra, name, i, j, window}, v)
      when name in [:window_scatter_max, :window_scatter_min] do
    t = elem(v, i)
    # the source has the shape of the windows' count (stride = window, no padding)
    counts = Enum.zip_with(Tuple.to_list(t.shape), window, &div(&1, &2))
    n = Enum.product(counts)
    # (j's entries, repeated as needed)
    src = elem(v, j) |> Nx.flatten() |> Nx.tile([n]) |> Nx.slice([0], [n])
    src = Nx.reshape(src, List.to_tuple(counts))
    apply(Nx, name, [t, src, 0.0, List.to_tuple(window), [strides: window]])
  end

  defp rank(v), do: tuple_size(v.s)
  defp size(v), do: v.s |> Tuple.to_list() |> Enum.product()
  defp real?(v), do: float?(v) or int?(v)
  defp bool_like?(%{t: t}), do: t == {:u, 8}
end
