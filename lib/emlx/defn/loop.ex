defmodule EMLX.Defn.Loop do
  @moduledoc false
  # `while` under `compiler: EMLX`.
  #
  # Nx's evaluator runs a `while` from the BEAM: it evaluates the condition,
  # reads it back, evaluates the body, and again. Under the recorder every
  # iteration would flush a segment, build a new program and keep every
  # intermediate array until the call ends. Instead, each `while` node of
  # the expression is replaced (by `rewrite/3`, before the evaluator sees
  # it) with a runtime call into `run/4`, which records the condition and
  # the body once each, as programs of their own over the loop state
  # (`EMLX.Defn.Recorder.static/1`), and records one loop instruction: the
  # worker thread runs the whole loop, condition and body compiled by
  # mx::compile, with no BEAM round trip per iteration. The enclosing
  # recording stays one program, so it is cached like any other.
  #
  # Inside a loop, a `cond` whose branches are free of side effects and
  # loops is computed as a `select` of its branches (see `EMLX.Defn.Select`),
  # so data-dependent branches in a loop body need no read-back either.
  #
  # A condition or body that still needs data while recording (a hook, a
  # nested loop that cannot be compiled, a `cond` with a side effect) runs
  # from the BEAM instead: each iteration is a recording of its own, the
  # first one's plan reused when it has one, and the state between
  # iterations is the only thing kept.

  alias EMLX.Defn.{Recorder, Select, Sub}
  alias Nx.Defn.Composite
  alias Nx.Tensor, as: T

  @doc """
  The `while` node `t` (with its initial state already rewritten) as a
  runtime call into `run/4`. `opts` are the compiler's options (hooks).
  """
  def rewrite(%T{data: %Nx.Defn.Expr{op: :while, args: [_, arg, pred, block]}} = t, initial, opts) do
    template = Composite.traverse(arg, &Nx.to_template/1)
    fun = fn state, _opts -> run(state, arg, {pred, block}, opts) end
    %{t | data: %{t.data | op: :runtime_call, args: [initial, fun, template, []]}}
  end

  @doc "Runs the loop from the evaluated initial `state` (a tensor or a flat tuple)."
  def run(state, arg, {pred, block}, opts) do
    {device, queue} = Recorder.target()
    templates = arg |> flat() |> Enum.map(&Nx.to_template/1)
    handles = Enum.map(flat(state), &EMLX.Backend.ref_on(&1, device, queue))

    final =
      with {:ok, cond} <- Sub.static(Select.lower(pred), templates, opts),
           {:ok, body} <- Sub.static(Select.lower(block), templates, opts) do
        Recorder.record_while(handles, cond, body)
      else
        :dynamic -> from_beam(handles, templates, pred, block, opts, device, queue)
      end

    Sub.tensors(templates, final, arg)
  end

  defp flat(%T{} = t), do: [t]
  defp flat(tuple) when is_tuple(tuple), do: Tuple.to_list(tuple)

  # The loop driven from the BEAM: real arrays in, real arrays out.
  defp from_beam(handles, templates, pred, block, opts, device, queue) do
    state = Enum.map(handles, &EMLX.Dispatch.materialize/1)
    cond = step(pred, templates, opts, device, queue)
    body = step(block, templates, opts, device, queue)
    beam_loop(state, cond, body, Nx.to_template(pred), device, queue)
  end

  defp beam_loop(state, cond, body, pred_template, device, queue) do
    {[pred], cond} = cond.(state)

    if Nx.to_number(%{pred_template | data: EMLX.Backend.data(pred, device, queue)}) != 0 do
      {state, body} = body.(state)
      beam_loop(state, cond, body, pred_template, device, queue)
    else
      state
    end
  end

  # One evaluation of `expr` on real arrays, as a function that returns the
  # result arrays and the function for the next iteration: the recording's
  # plan when it had one (one NIF call from then on), else a new recording.
  defp step(expr, templates, opts, device, queue) do
    eval = Sub.evaluator(expr, opts)

    fn state ->
      {outs, rec} =
        Recorder.with_recorder(queue, device, fn ->
          params =
            for {{t, ref}, p} <- Enum.with_index(Enum.zip(templates, state)) do
              fn -> %{t | data: EMLX.Backend.data(Recorder.bind_param(p, ref), device, queue)} end
            end

          [result] = eval.([params])
          Sub.handles(result, device, queue)
        end)

      {refs, plan} = Recorder.finish(rec, outs)
      {refs, next(plan, expr, templates, opts, device, queue)}
    end
  end

  defp next(nil, expr, templates, opts, device, queue),
    do: step(expr, templates, opts, device, queue)

  defp next(plan, _expr, _templates, _opts, _device, queue), do: &run_plan(plan, queue, &1)

  defp run_plan(plan, queue, state) do
    inputs =
      Enum.map(plan.sources, fn
        {:param, p} -> Enum.at(state, p)
        {:const, ref} -> ref
      end)

    {Recorder.run_program(queue, plan.program, inputs), &run_plan(plan, queue, &1)}
  end
end
