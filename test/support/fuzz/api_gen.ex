defmodule EMLX.Fuzz.ApiGen do
  @moduledoc false
  # The fuzz storm's calls at the public API: Nx on EMLX.Backend, and EMLX
  # on device refs (see EMLX.Fuzz.Gen for the NIF calls).

  import EMLX.Fuzz.Values
  alias EMLX.Fuzz.Gen

  ## Nx on EMLX.Backend

  defp t(st), do: if(chance(0.93), do: array(st, :t, true), else: nx_garbage())
  defp th(st), do: if(chance(0.95), do: array(st, :t), else: nx_garbage())

  # Nx reads `x.shape` of some arguments, which warns (a deprecation) for
  # atoms, and warns on maps given to stack/concatenate: no such garbage.
  defp nx_garbage do
    g = garbage()
    if is_atom(g) or is_map(g), do: nx_garbage(), else: g
  end

  defp trank(st, t), do: rank_of(st, t, :t)

  defp axes(rank) do
    cond do
      chance(0.6) -> for _ <- 1..rand(2), do: rand(rank + 3) - 2
      chance(0.5) -> ints(rank)
      true -> garbage()
    end
  end

  # Nx warns (0..-1 has a default step) on indices whose last axis is empty.
  defp indices(st) do
    i = t(st)

    case i do
      {:"$t", l} ->
        case lookup(st, :t, l) do
          {_, %{shape: shape}}
          when tuple_size(shape) > 0 and elem(shape, tuple_size(shape) - 1) == 0 ->
            {:"$t", :s32_2x1}

          _ ->
            i
        end

      _ ->
        i
    end
  end

  # Nx.iota/2 and Nx.eye/2 warn (a deprecation) on anything but a tuple.
  defp shape_tuple(rank) do
    case ints(rank) do
      {tag, _} when tag in [:"$a", :"$t", :"$d"] -> {-1, :x}
      t when is_tuple(t) -> t
      l when is_list(l) -> List.to_tuple(int_list(l))
      _ -> {-1, :x}
    end
  end

  defp axis(rank), do: if(chance(0.7), do: rand(rank + 3) - 2, else: int())

  defp opts(pairs), do: Enum.filter(pairs, fn _ -> chance(0.8) end)

  @unary [:exp, :log, :sqrt, :abs, :negate, :sign, :floor, :round, :bitwise_not, :erf_inv] ++
           [:is_nan, :logical_not, :population_count, :count_leading_zeros, :real, :conjugate]
  @binary [:add, :subtract, :multiply, :divide, :pow, :remainder, :quotient, :atan2, :min] ++
            [:bitwise_and, :left_shift, :right_shift, :equal, :less, :logical_xor, :max]

  def gen_nx(st) do
    a = t(st)
    r = trank(st, a)

    case rand(26) do
      1 ->
        {Nx, pick(@unary), [a]}

      2 ->
        {Nx, pick(@binary), [a, if(chance(0.8), do: t(st), else: number())]}

      3 ->
        {Nx, :reshape, [th(st), ints(r)]}

      4 ->
        {Nx, pick([:sum, :product, :reduce_max, :reduce_min, :all, :any]),
         [th(st), opts(axes: axes(r), keep_axes: flag())]}

      5 ->
        {Nx, pick([:argmax, :argmin]),
         [a, opts(axis: axis(r), keep_axis: flag(), tie_break: pick([:low, :high, :mid]))]}

      6 ->
        {Nx, :transpose, [th(st), opts(axes: axes(r))]}

      7 ->
        {Nx, :broadcast, [th(st), ints(r + 1), opts(axes: axes(r))]}

      8 ->
        {Nx, :as_type, [th(st), type()]}

      9 ->
        {Nx, :bitcast, [a, type()]}

      10 ->
        {Nx, :slice, [th(st), ints(r), ints(r), opts(strides: ints(r))]}

      11 ->
        starts =
          for _ <- 1..max(r, 1), do: if(chance(0.7), do: int(), else: t(st))

        {Nx, :put_slice, [a, starts, t(st)]}

      12 ->
        {Nx, :take, [a, t(st), opts(axis: axis(r))]}

      13 ->
        {Nx, :take_along_axis, [a, t(st), opts(axis: axis(r))]}

      14 ->
        {Nx, :gather, [a, indices(st), opts(axes: axes(r))]}

      15 ->
        {Nx, pick([:indexed_add, :indexed_put]), [a, indices(st), t(st), opts(axes: axes(r))]}

      16 ->
        if chance(0.5),
          do: {Nx, :dot, [a, t(st)]},
          else: {Nx, :dot, [a, axes(r), axes(r), t(st), axes(r), axes(r)]}

      17 ->
        config = for _ <- 1..max(r, 0)//1, do: {int(), int(), rand(3) - 1}
        {Nx, :pad, [a, number(), if(chance(0.9), do: config, else: garbage())]}

      18 ->
        {Nx, pick([:concatenate, :stack]), [for(_ <- 1..rand(3), do: t(st)), opts(axis: axis(r))]}

      19 ->
        {Nx, pick([:sort, :argsort]),
         [a, opts(axis: axis(r), direction: pick([:asc, :desc, :up]))]}

      20 ->
        {Nx, pick([:cumulative_sum, :cumulative_product, :cumulative_max, :cumulative_min]),
         [a, opts(axis: axis(r), reverse: flag())]}

      21 ->
        {Nx, :iota,
         [shape_tuple(rand(3)), opts(axis: axis(2), type: type(), backend: EMLX.Backend)]}

      22 ->
        {Nx, pick([:squeeze, :reverse]), [a, opts(axes: axes(r))]}

      23 ->
        {Nx, pick([:select, :clip]), [a, t(st), t(st)]}

      24 ->
        data = pick([[1, 2, 3], [[1, 2], [3]], [:a], 2 ** 70, [1.0, :nan], [], [[]], garbage()])
        {Nx, :tensor, [data, opts(type: type(), backend: EMLX.Backend)]}

      25 ->
        bin = if chance(0.7), do: :binary.copy(<<1>>, rand(16) - 1), else: garbage()
        {Nx, :from_binary, [bin, type(), [backend: EMLX.Backend]]}

      26 ->
        case rand(6) do
          1 -> {Nx, :backend_deallocate, [dyn_array(st, :t)]}
          2 -> {Nx, :backend_transfer, [dyn_array(st, :t, true), Nx.BinaryBackend]}
          3 -> {Nx, :to_number, [a]}
          4 -> {Nx, :to_binary, [a, opts(limit: int())]}
          5 -> {Nx, :to_list, [a]}
          6 -> {Nx, :eye, [shape_tuple(2), opts(type: type(), backend: EMLX.Backend)]}
        end
    end
  end

  ## EMLX on device refs

  @emlx_unary [:abs, :exp, :sqrt, :negate, :bitwise_not, :logical_not, :is_nan, :real]
  @emlx_binary [:add, :divide, :remainder, :quotient, :left_shift, :equal, :maximum]

  defp d(st), do: if(chance(0.93), do: array(st, :d), else: garbage())
  defp de(st), do: if(chance(0.93), do: array(st, :d, true), else: garbage())

  def gen_emlx(st) do
    a = d(st)
    r = rank_of(st, a, :d)

    case rand(16) do
      1 ->
        {EMLX, pick(@emlx_unary), [a]}

      2 ->
        {EMLX, pick(@emlx_binary), [a, d(st)]}

      3 ->
        {EMLX, pick([:sum, :product, :max, :min, :all, :any]), [a, axes(r), flag()]}

      4 ->
        {EMLX, pick([:argmax, :argmin]), [a, axis(r), flag()]}

      5 ->
        {EMLX, pick([:reshape, :transpose, :squeeze, :broadcast_to]), [a, ints(r)]}

      6 ->
        {EMLX, pick([:astype, :view]), [a, type()]}

      7 ->
        {EMLX, pick([:where, :clip]), [a, d(st), d(st)]}

      8 ->
        {EMLX, pick([:concatenate, :stack]), [for(_ <- 1..rand(3), do: d(st)), axis(r)]}

      9 ->
        {EMLX, pick([:sort, :argsort, :cumulative_sum, :cumulative_max]),
         [a, axis(r)] ++ if(chance(0.5), do: [flag()], else: [])}
        |> fix_arity()

      10 ->
        {EMLX, pick([:take, :take_along_axis]), [a, d(st), axis(r)]}

      11 ->
        case rand(4) do
          1 -> {EMLX, :full, [number(), ints(rand(3)), type()]}
          2 -> {EMLX, :eye, [int(), int(), type()]}
          3 -> {EMLX, :ones, [ints(rand(3)), type(), pick([:cpu, :gpu, :tpu])]}
          4 -> {EMLX, :scalar_tensor, [number(), type()]}
        end

      12 ->
        shape = ints(rand(3) - 1)
        type = type()
        {EMLX, :from_blob, [shape_binary(shape, type), shape, type]}

      13 ->
        case rand(5) do
          1 -> {EMLX, :to_blob, [de(st)]}
          2 -> {EMLX, :to_blob, [de(st), int()]}
          3 -> {EMLX, :item, [de(st)]}
          4 -> {EMLX, :eval, [de(st)]}
          5 -> {EMLX, :deallocate, [dyn_array(st, :d)]}
        end

      14 ->
        {EMLX, pick([:shape, :scalar_type, :strides, :to_nx]), [a]}

      15 ->
        {name, sig} = pick(st.ops)
        st = Map.put(st, :eager, name not in Gen.lazy_ops())
        args = for k <- sig, do: if(chance(0.9), do: emlx_arg(st, k, r), else: garbage())
        {EMLX, :op, [name, args] ++ if(chance(0.3), do: [type()], else: [])}

      16 ->
        case rand(5) do
          1 -> {EMLX, pick([:set_cache_limit, :set_memory_limit]), [pick([-1, 1.5, :x])]}
          2 -> {EMLX.CommandQueue, :new, [pick([:tpu, nil, "cpu"])]}
          3 -> {EMLX.CommandQueue, :synchronize, [garbage()]}
          4 -> {EMLX.CommandQueue, :with_queue, [garbage(), fn -> :ok end]}
          5 -> {EMLX.Backend, :to_nx, [garbage()]}
        end
    end
  end

  defp fix_arity({EMLX, f, [a, ax, _flag]}) when f in [:sort, :argsort], do: {EMLX, f, [a, ax]}

  defp fix_arity({EMLX, f, [a, ax]}) when f in [:cumulative_sum, :cumulative_max],
    do: {EMLX, f, [a, ax, false]}

  defp fix_arity(call), do: call

  defp emlx_arg(st, ?a, _), do: array(st, :d)
  defp emlx_arg(st, ?A, _), do: for(_ <- 1..rand(2), do: array(st, :d))
  defp emlx_arg(st, kind, rank), do: Gen.arg(st, kind, rank)
end
