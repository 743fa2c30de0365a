defmodule EMLX.Defn.Sub do
  @moduledoc false
  # Sub-expressions of a recording (a loop's condition and body, a cond's
  # predicates and branches) evaluated over parameters of their own: either
  # recorded as a program of their own (`static/4`, for a loop or cond
  # instruction the worker runs) or evaluated into the current recording
  # (`inline/3`).

  alias EMLX.Defn.{Callbacks, Recorder}
  alias Nx.Defn.{Composite, Expr, Tree}
  alias Nx.Tensor, as: T

  @doc """
  The ids of the nodes `expr`'s scope computes whatever its conds decide:
  reachable from its outputs without entering a cond's branches (a cond's
  first predicate is always computed) nor a loop's condition and body.
  Unlike `Nx.Defn.Tree.scope_ids/1`, a node that two conds share only in
  their branches is not among them: Nx's evaluator computes it only when
  a branch reads it.
  """
  def eager_ids(expr), do: Composite.reduce(expr, %{}, &eager/2)

  defp eager(%T{data: %Expr{id: id, op: op, args: args}} = t, ids) do
    cond do
      Map.has_key?(ids, id) ->
        ids

      op == :cond ->
        [[{first, _} | _], _] = args
        eager(first, Map.put(ids, id, true))

      true ->
        {_, ids} =
          Tree.apply_args(t, :scope, Map.put(ids, id, true), fn arg, acc ->
            {arg, eager(arg, acc)}
          end)

        ids
    end
  end

  defp eager(_other, ids), do: ids

  @doc "Nx's evaluator over `expr` (its parameters are given at each call)."
  def evaluator(expr, opts) do
    Nx.Defn.Evaluator.__compile__(
      nil,
      nil,
      Callbacks.wrap(fn _ -> expr end, opts),
      Callbacks.evaluator_opts(opts)
    )
  end

  @doc """
  `expr` over parameters of the given templates, recorded as a program of
  its own: `{:ok, plan}` (see `EMLX.Defn.Recorder.static/1`), or `:dynamic`
  when it needs data while recording.
  """
  def static(expr, templates, opts) do
    {device, queue} = Recorder.target()
    eval = evaluator(expr, opts)

    Recorder.static(fn ->
      params =
        templates
        |> Enum.with_index()
        |> Enum.map(fn {t, p} ->
          fn -> %{t | data: EMLX.Backend.data({:emlx_param, p}, device, queue)} end
        end)

      [result] = eval.([params])
      handles(result, device, queue)
    end)
  end

  @doc "`expr` with parameters `inputs` (tensors), into the current recording: its handles."
  def inline(expr, inputs, opts) do
    {device, queue} = Recorder.target()
    [result] = evaluator(expr, opts).([Enum.map(inputs, &fn -> &1 end)])
    handles(result, device, queue)
  end

  @doc """
  A block's callback of arity `arity` (the block's struct, its tensors, its
  options) that evaluates `body`, the block's traced default implementation,
  over the given tensors, into the current recording. `nil` past arity 8.
  """
  def block_callback(body, arity, opts) when arity <= 8 do
    run = fn [_struct | args] ->
      tensors = Enum.take_while(args, &(not is_list(&1)))
      [result] = evaluator(body, opts).([Enum.map(tensors, &fn -> &1 end)])
      result
    end

    case arity do
      1 -> fn a -> run.([a]) end
      2 -> fn a, b -> run.([a, b]) end
      3 -> fn a, b, c -> run.([a, b, c]) end
      4 -> fn a, b, c, d -> run.([a, b, c, d]) end
      5 -> fn a, b, c, d, e -> run.([a, b, c, d, e]) end
      6 -> fn a, b, c, d, e, f -> run.([a, b, c, d, e, f]) end
      7 -> fn a, b, c, d, e, f, g -> run.([a, b, c, d, e, f, g]) end
      8 -> fn a, b, c, d, e, f, g, h -> run.([a, b, c, d, e, f, g, h]) end
    end
  end

  def block_callback(_body, _arity, _opts), do: nil

  @doc "The handles of every tensor of `result` (other backends' data moved in)."
  def handles(result, device, queue) do
    [result]
    |> Composite.flatten_list()
    |> Enum.map(&EMLX.Backend.ref_on(&1, device, queue))
  end

  @doc "The tensors of templates `templates` over handles `handles`, as `shape` is (a tensor or a tuple)."
  def tensors(templates, handles, shape) do
    {device, queue} = Recorder.target()

    tensors =
      Enum.zip_with(templates, handles, fn t, h ->
        %{t | data: EMLX.Backend.data(h, device, queue)}
      end)

    case shape do
      %Nx.Tensor{} -> hd(tensors)
      _ -> List.to_tuple(tensors)
    end
  end
end
