defmodule EMLX.Defn.Select do
  @moduledoc false
  # `cond` as `select`, for the bodies and conditions of loops (see
  # EMLX.Defn.Loop).
  #
  # Nx's evaluator runs a `cond` by reading its predicates back. Inside a
  # loop that would stop the loop from running on the worker thread, so a
  # `cond` there is computed as nested `Nx.select`s of its branches when
  # that cannot be told apart: its branches (and the predicates after the
  # first) hold no side effect and no loop (no hook, token, runtime call,
  # `while`, and no inner `cond` that is not itself lowered). Expressions
  # the enclosing scope computes anyway (`EMLX.Defn.Sub.eager_ids/1`) are
  # not looked into. MLX ops do not
  # raise on data (an integer division by zero gives a value), so computing
  # the branch not taken changes nothing but time.

  alias Nx.Defn.{Composite, Expr, Tree}
  alias Nx.Tensor, as: T

  @unsafe [:while, :hook, :token, :runtime_call, :cond]

  @doc "`expr` (a tensor or a container) with its lowerable `cond`s as selects."
  def lower(expr) do
    scope = EMLX.Defn.Sub.eager_ids(expr)
    {expr, _seen} = Composite.traverse(expr, %{}, &node(&1, &2, scope))
    expr
  end

  # Each occurrence of a node keeps its own tensor struct (a vectorized and
  # a devectorized view share one node); a lowered cond is its select.
  defp node(%T{data: %Expr{id: id}} = t, seen, scope) do
    case seen do
      %{^id => {:data, done}} ->
        {%{t | data: done}, seen}

      %{^id => done} ->
        {done, seen}

      %{} ->
        {done, seen} = op(t, seen, scope)
        memo = if done.data.id == id, do: {:data, done.data}, else: done
        {done, Map.put(seen, id, memo)}
    end
  end

  defp node(other, seen, _scope), do: {other, seen}

  # Only the initial state of an inner loop is in this scope.
  defp op(%T{data: %Expr{op: :while}} = t, seen, scope) do
    {args, seen} = Tree.apply_args(t, :scope, seen, &node(&1, &2, scope))
    {put_in(t.data.args, args), seen}
  end

  defp op(%T{data: %Expr{op: :cond}} = t, seen, scope) do
    {t, seen} = cond_args(t, seen, scope)

    case {t, selects(t, scope)} do
      {%T{type: {:tuple, _}}, _} -> {t, seen}
      {_, {:ok, [select]}} -> {select, seen}
      {_, _} -> {t, seen}
    end
  end

  defp op(%T{data: %Expr{op: :elem, args: [%T{data: %Expr{op: :cond}} = c, i]}} = t, seen, scope) do
    {c, seen} = node(c, seen, scope)

    case c do
      %T{data: %Expr{op: :cond}} ->
        # the lowered tuple is kept under a key of its own
        key = {:selects, c.data.id}

        {result, seen} =
          case seen do
            %{^key => result} -> {result, seen}
            %{} -> then(selects(c, scope), &{&1, Map.put(seen, key, &1)})
          end

        case result do
          {:ok, list} -> {Enum.at(list, i), seen}
          :keep -> {put_in(t.data.args, [c, i]), seen}
        end

      other ->
        {put_in(t.data.args, [other, i]), seen}
    end
  end

  defp op(t, seen, scope) do
    {args, seen} = Tree.apply_args(t, :scope, seen, &node(&1, &2, scope))
    {put_in(t.data.args, args), seen}
  end

  defp cond_args(%T{data: %Expr{args: [clauses, last]}} = t, seen, scope) do
    {clauses, seen} =
      Enum.map_reduce(clauses, seen, fn {pred, body}, seen ->
        {pred, seen} = node(pred, seen, scope)
        {body, seen} = Composite.traverse(body, seen, &node(&1, &2, scope))
        {{pred, body}, seen}
      end)

    {last, seen} = Composite.traverse(last, seen, &node(&1, &2, scope))
    {put_in(t.data.args, [clauses, last]), seen}
  end

  # {:ok, one select per output} when the (lowered) cond `t` is safe to
  # compute as selects, else :keep.
  defp selects(%T{data: %Expr{args: [[_ | _] = clauses, last]}} = t, scope) do
    leaves = Composite.flatten_list([last])
    branches = [last | Enum.map(clauses, &elem(&1, 1))]
    later_preds = clauses |> tl() |> Enum.map(&elem(&1, 0))

    safe? =
      t.vectorized_axes == [] and leaves != [] and
        Enum.all?(leaves, &(&1.vectorized_axes == [])) and
        safe?(branches ++ later_preds, scope)

    if safe? do
      selects =
        Enum.reduce(Enum.reverse(clauses), leaves, fn {pred, body}, acc ->
          body |> List.wrap() |> flat() |> Enum.zip_with(acc, &Nx.select(pred, &1, &2))
        end)

      {:ok, selects}
    else
      :keep
    end
  end

  defp flat(list), do: Composite.flatten_list(list)

  # No unsafe op among the nodes only these expressions compute.
  defp safe?(exprs, scope) do
    exprs
    |> Composite.flatten_list()
    |> Enum.reduce_while(%{}, fn t, seen ->
      case visit(t, seen, scope) do
        :unsafe -> {:halt, :unsafe}
        seen -> {:cont, seen}
      end
    end)
    |> Kernel.!=(:unsafe)
  end

  defp visit(%T{data: %Expr{id: id, op: op}} = t, seen, scope) do
    cond do
      Map.has_key?(seen, id) or Map.has_key?(scope, id) ->
        seen

      op in @unsafe ->
        :unsafe

      true ->
        t
        |> Tree.apply_args(:scope, Map.put(seen, id, true), fn arg, acc ->
          case acc do
            :unsafe -> {arg, :unsafe}
            acc -> {arg, visit(arg, acc, scope)}
          end
        end)
        |> elem(1)
    end
  end

  defp visit(_other, seen, _scope), do: seen
end
