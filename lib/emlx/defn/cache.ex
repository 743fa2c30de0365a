defmodule EMLX.Defn.Cache do
  @moduledoc false
  # The plan cache of `compiler: EMLX` (ETS table `:emlx_defn_cache`).
  #
  # A plan may be reused only by a call that would trace to the same
  # program. The key therefore holds everything the trace depends on:
  #
  #   * the function, as its identity plus a fingerprint of its captured
  #     environment (Nx wraps a function given non-tensor arguments, such as
  #     keyword options, in a closure that captures them, so they are here);
  #   * the parameters as Nx passes them: the argument containers with their
  #     structure (tuple, map, struct) and every non-tensor field, each
  #     tensor reduced to its template (type, shape, names, vectorized axes);
  #   * the command queue, the names of the active hooks and the linear
  #     algebra mode (`config :emlx, :linalg`), which changes the lowering.
  #
  # The fingerprint is built by one walk that never copies an expression
  # into the key: an `Nx.Defn.Expr` node is visited once per id (so a DAG
  # shared 2^n ways costs n steps) and appears as `{op, type, shape, names,
  # args}` with its children numbered in visit order. Real tensors appear by
  # identity (an EMLX array's reference) or by content (a digest of a large
  # binary). The walk stops after `@budget` terms; such a call is not cached
  # (it records every time), so a key costs at most that many steps.
  #
  # The table holds at most `config :emlx, :plan_cache_size` plans (default
  # 512); the oldest are dropped first, with the arrays they captured.

  @table :emlx_defn_cache
  @order :emlx_defn_cache_order
  @budget 200_000
  @inline_binary 256

  @doc "Creates the tables (called once by `EMLX.Application`)."
  def init do
    if :ets.whereis(@table) == :undefined do
      :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
      :ets.new(@order, [:named_table, :public, :ordered_set])
    end

    :ok
  end

  @doc """
  The key for a call of `fun` with the parameter containers `vars`, or
  `:uncached` when the fingerprint exceeds the budget.
  """
  def key(fun, vars, queue, hooks) do
    {fingerprint, _state} = walk({fun, vars}, {%{}, 0})

    {fingerprint, queue, hooks |> Map.keys() |> Enum.sort(),
     Application.get_env(:emlx, :linalg, :native)}
  catch
    :emlx_uncached -> :uncached
  end

  @doc """
  The key of a function compiled once with `Nx.Defn.compile/3`: its plan
  serves every call (Nx checks each call's arguments against the
  templates), so the key need not describe the function; a small key keeps
  each call's lookup cheap (a fingerprint of hundreds of parameters costs
  a lookup about 0.2 ms to hash and copy).
  """
  def compiled_key(queue, hooks, ref \\ nil) do
    {:compiled, ref || make_ref(), queue, hooks |> Map.keys() |> Enum.sort(),
     Application.get_env(:emlx, :linalg, :native)}
  end

  @doc "The cached value for `key` (`nil` when absent)."
  def lookup(:uncached), do: nil

  def lookup(key) do
    case :ets.lookup(@table, key) do
      [{_, _seq, value}] -> value
      [] -> nil
    end
  end

  @doc "Stores `value` under `key`, dropping the oldest plans past the limit."
  def store(:uncached, _value), do: :ok

  def store(key, value) do
    seq = :erlang.unique_integer([:monotonic])

    if :ets.insert_new(@table, {key, seq, value}) do
      :ets.insert(@order, {seq, key})
      evict(limit())
    end

    :ok
  end

  @doc "Drops every cached plan."
  def clear do
    :ets.delete_all_objects(@table)
    :ets.delete_all_objects(@order)
    :ok
  end

  @doc "The number of cached plans."
  def size, do: :ets.info(@table, :size)

  defp limit, do: Application.get_env(:emlx, :plan_cache_size, 512)

  # Drops the oldest plans until at most `limit` are left. Processes that
  # store at once evict at once: one that finds the oldest entry already
  # taken by another goes on to the next.
  defp evict(limit) do
    with true <- :ets.info(@table, :size) > limit,
         seq when seq != :"$end_of_table" <- :ets.first(@order) do
      case :ets.take(@order, seq) do
        [{^seq, key}] -> :ets.delete(@table, key)
        [] -> :ok
      end

      evict(limit)
    else
      _ -> :ok
    end
  end

  ## The fingerprint walk. State: {expression ids seen => number, terms visited}.

  defp walk(_term, {_seen, count}) when count > @budget, do: throw(:emlx_uncached)

  # A parameter is its position and template (one step; the common case:
  # every argument of a call).
  defp walk(%Nx.Tensor{data: %Nx.Defn.Expr{op: :parameter, args: [i]}} = t, {seen, count})
       when is_integer(i),
       do: {{:param, i, t.type, t.shape, t.names, t.vectorized_axes}, {seen, count + 1}}

  defp walk(%Nx.Tensor{data: %Nx.Defn.Expr{id: id} = expr} = t, {seen, count}) do
    case seen do
      %{^id => n} ->
        {{:node, n}, {seen, count + 1}}

      %{} ->
        {args, {seen, count}} = walk(expr.args, {seen, count + 1})
        n = map_size(seen)
        node = {:expr, n, expr.op, t.type, t.shape, t.names, t.vectorized_axes, args}
        {node, {Map.put(seen, id, n), count}}
    end
  end

  defp walk(%Nx.Tensor{data: data} = t, state) do
    {data, state} = walk_data(data, state)
    {{:tensor, t.type, t.shape, t.names, t.vectorized_axes, data}, state}
  end

  defp walk(%{__struct__: _} = struct, state), do: walk_map(struct, state)
  defp walk(map, state) when is_map(map), do: walk_map(map, state)

  defp walk([head | tail], state) do
    {head, state} = walk(head, state)
    {tail, state} = walk(tail, state)
    {[head | tail], state}
  end

  defp walk(tuple, state) when is_tuple(tuple) do
    {list, state} = walk(Tuple.to_list(tuple), state)
    {List.to_tuple(list), state}
  end

  defp walk(fun, state) when is_function(fun) do
    case Function.info(fun, :type) do
      {:type, :external} ->
        {fun, bump(state)}

      {:type, :local} ->
        info = Function.info(fun)
        {env, state} = walk(info[:env], bump(state))
        {{:fun, info[:module], info[:new_uniq], info[:index], env}, state}
    end
  end

  defp walk(bin, state) when is_binary(bin) and byte_size(bin) > @inline_binary,
    do: {{:binary, byte_size(bin), :erlang.md5(bin)}, bump(state)}

  defp walk(other, state), do: {other, bump(state)}

  defp walk_map(map, state) do
    {pairs, state} =
      map
      |> Map.to_list()
      |> Enum.sort()
      |> Enum.map_reduce(state, fn {k, v}, state ->
        {k, state} = walk(k, state)
        {v, state} = walk(v, state)
        {{k, v}, state}
      end)

    {{:map, pairs}, state}
  end

  # An EMLX array by identity (its reference); other backends' data by
  # value (the Nx.BinaryBackend binary, digested when large).
  defp walk_data(%EMLX.Backend{device: device} = data, state),
    do: {{EMLX.Backend, device, EMLX.Backend.handle(data)}, bump(state)}

  defp walk_data(data, state), do: walk(data, state)

  defp bump({seen, count}), do: {seen, count + 1}
end
