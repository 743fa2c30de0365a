defmodule EMLX.Backend.Fold do
  @moduledoc false
  # Reductions with an arbitrary function (`Nx.reduce/4`,
  # `Nx.window_reduce/5`) for EMLX.Backend, composed from Nx ops that run
  # on EMLX: the values to reduce are laid along a last axis. For a reduce
  # they are folded pairwise (a tree of log2(n) steps of element-wise ops on
  # MLX), then the initial accumulator is folded in: the function must be
  # associative and commutative, as for compiled backends. A window's few
  # values are folded into the accumulator in order, as Nx.BinaryBackend
  # does.
  #
  # Inside `defn`, Nx's evaluator hands over the function as a closure over
  # its traced body, whose ops carry the scalar shapes it was traced with;
  # applied to whole tensors it would give results of the wrong shape. Its
  # body is interpreted instead, op by op through Nx (element-wise ops,
  # constants, casts and selects: what an associative reduction holds).

  alias Nx.Defn.Expr
  alias Nx.Tensor, as: T

  @unary [:exp, :expm1, :log, :log1p, :sigmoid, :cos, :sin, :tan, :cosh, :sinh, :tanh] ++
           [:acos, :asin, :atan, :acosh, :asinh, :atanh, :sqrt, :rsqrt, :cbrt, :erf, :erfc] ++
           [:erf_inv, :negate, :abs, :sign, :floor, :ceil, :round, :bitwise_not] ++
           [:is_nan, :is_infinity, :conjugate, :real, :imag, :population_count] ++
           [:count_leading_zeros]

  @binary [:add, :subtract, :multiply, :divide, :pow, :remainder, :atan2, :max, :min] ++
            [:quotient, :bitwise_and, :bitwise_or, :bitwise_xor, :left_shift, :right_shift] ++
            [:logical_and, :logical_or, :logical_xor, :equal, :not_equal, :greater, :less] ++
            [:greater_equal, :less_equal]

  @doc "`Nx.Backend.reduce/5`."
  def reduce(%T{type: type, shape: out_shape} = out, %T{shape: shape} = tensor, acc, opts, fun) do
    axes = opts[:axes] || Nx.axes(shape)
    kept = Nx.axes(shape) -- axes
    kept_shape = Enum.map(kept, &elem(shape, &1))

    flat =
      tensor
      |> Nx.transpose(axes: kept ++ axes)
      |> Nx.reshape(List.to_tuple(kept_shape ++ [Enum.reduce(axes, 1, &(elem(shape, &1) * &2))]))

    flat
    |> fold_last_axis(acc, List.to_tuple(kept_shape), whole(fun))
    |> Nx.as_type(type)
    |> Nx.reshape(out_shape)
    |> then(&%{out | data: &1.data})
  end

  @doc """
  The template of the windows of `Nx.Backend.window_reduce/6` for its
  output template `out`: one window per output element, along a last axis.
  """
  def windows_template(%T{shape: shape} = out, %T{type: type}, window) do
    windows_shape = List.to_tuple(Tuple.to_list(shape) ++ [Tuple.product(window)])

    %{
      out
      | shape: windows_shape,
        type: type,
        names: List.duplicate(nil, tuple_size(windows_shape))
    }
  end

  @doc "`Nx.Backend.window_reduce/6` given the `windows` (see `windows_template/3`)."
  def window_reduce(%T{type: type} = out, windows, acc, fun) do
    windows
    |> fold_in_order(acc, out.shape, whole(fun))
    |> Nx.as_type(type)
    |> then(&%{out | data: &1.data})
  end

  # A window is small: its elements are folded into the accumulator one by
  # one, in order, as Nx.BinaryBackend does (so a function that is not
  # associative, such as `acc + x * x`, gives Nx's result).
  defp fold_in_order(%T{shape: shape} = t, acc, result_shape, fun) do
    last = tuple_size(shape) - 1
    acc = Nx.broadcast(acc, result_shape)

    Enum.reduce(0..(elem(shape, last) - 1)//1, acc, fn k, acc ->
      t |> Nx.slice_along_axis(k, 1, axis: last) |> Nx.squeeze(axes: [last]) |> fun.(acc)
    end)
  end

  # `fun` as a function of whole tensors (see the module comment). The
  # evaluator keeps the arguments of the body's nodes in a cache map it
  # captures too, in a list ({:args, count, args} by id; the nodes hold nil).
  defp whole(fun) do
    with {:module, Nx.Defn.Evaluator} <- Function.info(fun, :module),
         {:env, env} <- Function.info(fun, :env),
         %T{data: %Expr{}} = body <- Enum.find(env, &match?(%T{data: %Expr{}}, &1)) do
      cache = env |> Enum.flat_map(&List.wrap/1) |> Enum.find(%{}, &evaluator_cache?/1)

      fn a, b ->
        {result, _memo} = interpret(body, {{a, b}, cache}, %{})
        result
      end
    else
      _ -> fun
    end
  end

  defp evaluator_cache?(%{} = map) when not is_struct(map),
    do: Enum.all?(map, &match?({_, {:args, _, _}}, &1))

  defp evaluator_cache?(_), do: false

  defp interpret(%T{data: %Expr{id: id, op: op, args: args}} = t, {_, cache} = env, memo) do
    case memo do
      %{^id => result} ->
        {result, memo}

      %{} ->
        args =
          case cache do
            %{^id => {:args, _, cached}} when args == nil -> cached
            _ -> args
          end

        {result, memo} = interpret_op(op, args, t, env, memo)
        {result, Map.put(memo, id, result)}
    end
  end

  defp interpret_op(:parameter, [i], _t, {params, _}, memo), do: {elem(params, i), memo}
  defp interpret_op(:constant, [c], t, _params, memo), do: {Nx.tensor(c, type: t.type), memo}
  defp interpret_op(:tensor, [tensor], _t, _params, memo), do: {tensor, memo}
  defp interpret_op(:metadata, [expr, _], _t, params, memo), do: interpret(expr, params, memo)

  defp interpret_op(op, args, t, params, memo)
       when op in @unary or op in @binary or op in [:select, :as_type] do
    {args, memo} = Enum.map_reduce(args, memo, &interpret(&1, params, &2))

    result =
      case op do
        :as_type -> Nx.as_type(hd(args), t.type)
        op -> Nx.as_type(apply(Nx, op, args), t.type)
      end

    {result, memo}
  end

  defp interpret_op(op, _args, _t, _params, _memo) do
    raise ArgumentError,
          "EMLX.Backend: the function of Nx.reduce/4 or Nx.window_reduce/5 inside defn " <>
            "may hold element-wise ops, constants, casts and selects; it holds #{inspect(op)}"
  end

  defp fold_last_axis(%T{shape: shape} = t, acc, result_shape, fun) do
    last = tuple_size(shape) - 1

    case elem(shape, last) do
      0 ->
        Nx.broadcast(acc, result_shape)

      _ ->
        t |> tree_fold(last, fun) |> Nx.squeeze(axes: [last]) |> fun.(acc)
    end
  end

  defp tree_fold(%T{shape: shape} = t, axis, fun) do
    case elem(shape, axis) do
      1 ->
        t

      n ->
        half = div(n, 2)
        a = Nx.slice_along_axis(t, 0, half, axis: axis)
        b = Nx.slice_along_axis(t, half, half, axis: axis)
        folded = fun.(a, b)

        folded =
          if rem(n, 2) == 1,
            do:
              Nx.concatenate([folded, Nx.slice_along_axis(t, n - 1, 1, axis: axis)], axis: axis),
            else: folded

        tree_fold(folded, axis, fun)
    end
  end
end
