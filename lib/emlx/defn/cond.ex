defmodule EMLX.Defn.Cond do
  @moduledoc false
  # `cond` under `compiler: EMLX`.
  #
  # Nx's evaluator runs a `cond` by reading its predicates back, which under
  # the recorder flushes a segment: the call then has no cached plan, and a
  # `cond` in a loop's body stops the loop from running on the worker
  # thread. Instead, each `cond` of a scope is replaced (by `rewrite/4`,
  # before the evaluator sees it) with a runtime call into `run/4`, whose
  # input is what its branches read of the enclosing scope. `run/4` records
  # the predicates and branches as programs of their own over those inputs
  # (`EMLX.Defn.Sub.static/3`) and one cond instruction: the worker reads
  # the predicate and runs the branch taken, only that one. A predicate or
  # branch that needs data while recording (a hook, for one) makes the
  # `cond` run as Nx's evaluator runs it: predicates read back in turn, and
  # the branch taken evaluated into the recording.

  alias EMLX.Defn.{Recorder, Sub}
  alias Nx.Defn.{Composite, Expr, Tree}
  alias Nx.Tensor, as: T

  @doc """
  The `cond` node `t` of a scope whose eager ids are `scope` (`EMLX.Defn.Sub.eager_ids/1`)
  as a runtime call into `run/4`, or `:keep` when it is left to Nx's evaluator
  (vectorized). `rewrite` rewrites the inputs (expressions of the scope).
  """
  def rewrite(%T{data: %Expr{op: :cond, args: [clauses, last]}} = t, scope, opts, seen, rewrite) do
    leaves = Composite.flatten_list([last])
    exprs = Enum.flat_map(clauses, fn {pred, body} -> [pred | Composite.flatten_list([body])] end)
    free = free_vars(exprs ++ leaves, scope)

    if t.vectorized_axes != [] or Enum.any?(leaves ++ free, &(&1.vectorized_axes != [])) do
      :keep
    else
      params =
        free |> Enum.with_index() |> Map.new(fn {f, i} -> {f.data.id, Expr.parameter(f, i)} end)

      {clauses, subst} = Enum.map_reduce(clauses, %{}, &substitute_clause(&1, &2, params))
      {last, _} = Composite.traverse(last, subst, &substitute(&1, &2, params))
      {inputs, seen} = Enum.map_reduce(free, seen, rewrite)
      template = Composite.traverse(last, &Nx.to_template/1)
      fun = fn values, _opts -> run(values, {clauses, last}, template, opts) end

      {%{
         t
         | data: %{t.data | op: :runtime_call, args: [List.to_tuple(inputs), fun, template, []]}
       }, seen}
    end
  end

  @doc "Runs the cond over the evaluated inputs `values` (a tuple)."
  def run(values, {clauses, last}, template, opts) do
    {device, queue} = Recorder.target()
    inputs = Tuple.to_list(values)
    templates = Enum.map(inputs, &Nx.to_template/1)
    handles = Enum.map(inputs, &EMLX.Backend.ref_on(&1, device, queue))

    final =
      case static(clauses, last, templates, opts) do
        {:ok, pred, then, otherwise} -> Recorder.record_cond(handles, pred, then, otherwise)
        :dynamic -> dynamic(clauses, last, inputs, opts)
      end

    Sub.tensors(Composite.flatten_list([template]), final, template)
  end

  # The first clause's predicate and branch, and the rest as one program
  # (a cond of its own when more clauses follow).
  defp static([{pred, body} | rest], last, templates, opts) do
    with {:ok, pred} <- Sub.static(pred, templates, opts),
         {:ok, then} <- Sub.static(body, templates, opts),
         {:ok, otherwise} <- rest_static(rest, last, templates, opts) do
      {:ok, pred, then, otherwise}
    end
  end

  defp rest_static([], last, templates, opts), do: Sub.static(last, templates, opts)

  defp rest_static(clauses, last, templates, opts) do
    with {:ok, pred, then, otherwise} <- static(clauses, last, templates, opts) do
      params = templates |> Enum.with_index() |> Enum.map(fn {_, p} -> {:emlx_param, p} end)
      Recorder.static(fn -> Recorder.record_cond(params, pred, then, otherwise) end)
    end
  end

  # As Nx's evaluator: predicates read back in turn, the branch taken inline.
  defp dynamic([{pred, body} | rest], last, inputs, opts) do
    {device, queue} = Recorder.target()
    [p] = Sub.inline(pred, inputs, opts)
    p = %{Nx.to_template(pred) | data: EMLX.Backend.data(p, device, queue)}

    if Nx.to_number(p) != 0,
      do: Sub.inline(body, inputs, opts),
      else: dynamic(rest, last, inputs, opts)
  end

  defp dynamic([], last, inputs, opts), do: Sub.inline(last, inputs, opts)

  # The expressions of the scope the branches read: where a walk from the
  # branches (and predicates) meets a node the scope computes anyway (for a
  # tuple, such as a loop's results, the element read), and every
  # parameter. Anything else stays in the branch, computed only when it is
  # taken. Constants stay in.
  defp free_vars(exprs, scope) do
    {_, free} = Enum.reduce(exprs, {%{}, []}, &walk(&1, &2, scope))
    Enum.reverse(free)
  end

  defp walk(%T{data: %Expr{id: id, op: op}} = t, {seen, free} = acc, scope) do
    cond do
      Map.has_key?(seen, id) ->
        acc

      op == :constant ->
        acc

      # a function (Nx.reduce's, window_reduce's) is a scope of its own: its
      # arguments are its own parameters, never the scope's (walked as free
      # variables, they came in as the scope's parameters of the same
      # position: an evaluator error, or another tensor)
      op == :fun ->
        acc

      # a parameter is read by position, so it always comes in
      Map.has_key?(scope, id) or op == :parameter ->
        {Map.put(seen, id, true), [t | free]}

      # an element of a tuple (a loop's, a cond's) the scope computes
      op == :elem and Map.has_key?(scope, hd(t.data.args).data.id) ->
        {Map.put(seen, id, true), [t | free]}

      true ->
        {_, acc} =
          Tree.apply_args(t, :scope, {Map.put(seen, id, true), free}, fn arg, acc ->
            {arg, walk(arg, acc, scope)}
          end)

        acc
    end
  end

  defp walk(_other, acc, _scope), do: acc

  defp substitute_clause({pred, body}, subst, params) do
    {pred, subst} = substitute(pred, subst, params)
    {body, subst} = Composite.traverse(body, subst, &substitute(&1, &2, params))
    {{pred, body}, subst}
  end

  # The expression with its free variables as parameters (ids kept).
  defp substitute(%T{data: %Expr{id: id}} = t, subst, params) do
    case {params, subst} do
      {%{^id => param}, _} ->
        {param, subst}

      {_, %{^id => done}} ->
        {%{t | data: done}, subst}

      _ ->
        {args, subst} = Tree.apply_args(t, :scope, subst, &substitute(&1, &2, params))
        done = put_in(t.data.args, args)
        {done, Map.put(subst, id, done.data)}
    end
  end

  defp substitute(other, subst, _params), do: {other, subst}
end
