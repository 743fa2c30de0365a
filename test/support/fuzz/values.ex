defmodule EMLX.Fuzz.Values do
  @moduledoc false
  # Random values for the fuzz storm (test/emlx/fuzz_test.exs): numbers,
  # types, shapes, garbage terms, and placeholders of the storm's pool
  # arrays. Everything is drawn from the process's :rand state, which the
  # storm seeds: a storm is reproducible call for call.
  #
  # Pool placeholders: `{:"$a", label}` (a NIF array ref), `{:"$t", label}`
  # (an Nx tensor), `{:"$d", label}` (a device ref); `st.fixed_lists` and
  # `st.dyn` hold the entries of each family (see EMLX.Fuzz.Storm).

  @valid_types EMLX.Types.native()
  @bad_types [
    {:f, 8},
    {:u, 4},
    {:s, 2},
    {:c, 128},
    {:x, 32},
    {:f, 18_446_744_073_709_551_616},
    {:f},
    {:f, 32, 1},
    :f32,
    "f32",
    {"f", 32},
    {:f, -32}
  ]
  @interesting_ints [
    -9_223_372_036_854_775_808,
    -2_147_483_649,
    -2_147_483_648,
    -100,
    -3,
    -2,
    -1,
    0,
    1,
    2,
    3,
    4,
    7,
    31,
    32,
    33,
    64,
    100,
    65_536,
    2_147_483_647,
    2_147_483_648,
    4_294_967_296,
    9_223_372_036_854_775_807,
    18_446_744_073_709_551_616
  ]

  def rand(n), do: :rand.uniform(n)
  def chance(p), do: :rand.uniform() < p
  def pick(list) when is_list(list), do: Enum.at(list, rand(length(list)) - 1)
  def pick(tuple) when is_tuple(tuple), do: elem(tuple, rand(tuple_size(tuple)) - 1)

  def garbage do
    pick([
      :foo,
      nil,
      true,
      false,
      :cpu,
      :gpu,
      :nan,
      :infinity,
      :bool,
      self(),
      make_ref(),
      %{},
      %{"shape" => {2}},
      1.5,
      -0.0,
      1.0e308,
      0,
      -1,
      2_147_483_648,
      -9_223_372_036_854_775_809,
      18_446_744_073_709_551_616,
      1_267_650_600_228_229_401_496_703_205_376,
      [1 | 2],
      [[1, [2, [3]]]],
      [:a, :b],
      [],
      {},
      {1, 2, 3},
      {:f, 32},
      {:u, 4},
      "str",
      <<1, 2, 3>>,
      ~c"abc",
      &Kernel.+/2,
      1..3,
      List.duplicate(1, 5000),
      :"$q",
      {:"$a", :f32_3},
      {:"$a", :deallocated}
    ])
  end

  def int do
    cond do
      chance(0.55) -> rand(7) - 3
      chance(0.9) -> pick(@interesting_ints)
      true -> garbage()
    end
  end

  def ints(rank_hint) do
    len =
      cond do
        chance(0.5) -> rank_hint
        chance(0.85) -> rand(5) - 1
        chance(0.5) -> pick([32, 33, 40])
        true -> 5000
      end

    list = for _ <- 1..len//1, do: if(chance(0.8), do: rand(4) - 1, else: int())

    cond do
      chance(0.6) -> list
      chance(0.85) -> List.to_tuple(list)
      chance(0.5) -> list ++ [garbage()]
      true -> garbage()
    end
  end

  def type do
    cond do
      chance(0.75) -> pick(@valid_types)
      chance(0.5) -> :bool
      chance(0.8) -> pick(@bad_types)
      true -> garbage()
    end
  end

  def number do
    cond do
      chance(0.3) -> rand(9) - 5
      chance(0.3) -> :rand.normal() * 1.0e3
      chance(0.3) -> pick([:nan, :infinity, :neg_infinity, 1.0e308, -0.0])
      chance(0.3) -> {pick([1, 2.5, :nan]), pick([-1, 0.0, :infinity])}
      chance(0.5) -> pick(@interesting_ints)
      true -> garbage()
    end
  end

  def flag, do: if(chance(0.9), do: chance(0.5), else: garbage())

  # An array placeholder of a family; `evaluable` excludes arrays that
  # must never be evaluated. Dynamic entries are earlier results.
  def array(st, family, evaluable \\ false) do
    fixed = st.fixed_lists[family]
    dyn = Map.to_list(st.dyn[family]) |> Enum.sort()

    candidates =
      if chance(0.35) and dyn != [],
        do: Enum.map(dyn, fn {l, {_, m}} -> {l, m} end),
        else: Enum.map(fixed, fn {l, _, m} -> {l, m} end)

    candidates =
      if evaluable or Map.get(st, :eager, false),
        do: Enum.filter(candidates, fn {_, m} -> m.safe end),
        else: candidates

    case candidates do
      [] -> {:"$#{family}", :f32_3}
      _ -> {:"$#{family}", elem(pick(candidates), 0)}
    end
  end

  def rank_of(st, {tag, label}, family) when tag in [:"$a", :"$t", :"$d"] do
    case lookup(st, family, label) do
      {_, %{shape: shape}} when is_tuple(shape) -> tuple_size(shape)
      _ -> rand(4) - 1
    end
  end

  def rank_of(_, _, _), do: rand(4) - 1

  def lookup(st, family, label),
    do: Map.get(st.fixed[family], label) || Map.get(st.dyn[family], label)

  def dyn_array(st, family, evaluable \\ false) do
    labels = for {l, {_, m}} <- st.dyn[family], m.safe or not evaluable, do: l

    case Enum.sort(labels) do
      [] -> garbage()
      labels -> {:"$#{family}", pick(labels)}
    end
  end

  # A binary that fits the shape and type when both are sane and small.
  def shape_binary(shape, type) do
    dims = if is_tuple(shape), do: Tuple.to_list(shape), else: int_list(shape)

    with true <- is_list(dims) and Enum.all?(dims, &(is_integer(&1) and &1 in 0..64)),
         bits when is_integer(bits) <- type_bits(type),
         n when n <= 4096 <- Enum.product(dims) do
      :binary.copy(<<0>>, n * div(bits, 8))
    else
      _ -> <<0, 0, 0, 0>>
    end
  end

  def type_bits(:bool), do: 8
  def type_bits({_, bits}) when bits in [8, 16, 32, 64], do: bits
  def type_bits(_), do: nil

  def int_list(t) when is_tuple(t), do: Tuple.to_list(t)

  def int_list(l) when is_list(l) do
    if proper_list?(l), do: l, else: []
  end

  def int_list(_), do: []

  defp proper_list?([]), do: true
  defp proper_list?([_ | t]), do: proper_list?(t)
  defp proper_list?(_), do: false
end
