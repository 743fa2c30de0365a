defmodule EMLX.Defn.Recorder do
  @moduledoc false
  # Records EMLX.Backend's ops as a flat program instead of running them.
  #
  # While a recorder is active in the process, every op EMLX.Backend would
  # post to the worker (through the one dispatch point, `EMLX.Dispatch.run/4`)
  # becomes an instruction, and the result is a placeholder
  # `{:emlx_slot, segment, {:out, j}}`. Operands become the segment's
  # inputs `{:in, i}`: the defn parameters (placeholders `{:emlx_param, p}`,
  # bound to a real array only when the computation first reads parameter
  # `p`, so unused inputs are never materialized), and real arrays met on
  # the way (constants captured in the expression, data from other
  # backends). Each input remembers its source, `{:param, p}` or
  # `{:const, ref}`, so a cached plan can be run with new parameters.
  #
  # When real data is needed (a `while` condition, a hook, reading a tensor
  # back), the current segment is flushed: it runs as one program, all its
  # results become real (lazy) arrays, and a new segment starts. A function
  # without such needs records as a single segment, which the compiler runs
  # under mx::compile and caches.
  #
  # A `while` records as one loop instruction (see EMLX.Defn.Loop): its
  # condition and body are recorded beforehand by `static/1`, each as a
  # program of its own over the loop state, which must need no data while
  # recording (a flush there throws, and the loop runs from the BEAM). A
  # `cond` records as one cond instruction the same way (EMLX.Defn.Cond).

  alias EMLX.{NIF, Worker}

  @key :emlx_recorder

  @typedoc "The stand-in for an array of a recording (see the module comment)."
  @type placeholder ::
          {:emlx_slot, non_neg_integer(), {:out, non_neg_integer()}}
          | {:emlx_param, non_neg_integer()}

  defstruct [
    :queue,
    :device,
    params: %{},
    segment: 0,
    instrs: [],
    nouts: 0,
    inputs: [],
    sources: [],
    ninputs: 0,
    input_index: %{},
    materialized: %{},
    flushed?: false,
    no_plan?: false,
    static?: false
  ]

  def active?, do: Process.get(@key) != nil

  @doc "The active recording's `{device, queue}`."
  def target do
    %__MODULE__{device: device, queue: queue} = Process.get(@key)
    {device, queue}
  end

  @doc """
  Runs `fun` with an empty recorder and returns `{result, recorder}`.
  Parameters join it through `bind_param/2`.
  """
  def with_recorder(queue, device, fun) do
    previous = Process.get(@key)
    Process.put(@key, %__MODULE__{queue: queue, device: device})

    try do
      result = fun.()
      {result, Process.get(@key)}
    after
      if previous, do: Process.put(@key, previous), else: Process.delete(@key)
    end
  end

  @doc """
  Runs `fun` with no recording active (its ops run eagerly): a lazy
  container's parameter function computes its tensor so (Nx.Batch stacks
  its entries when the computation reads it).
  """
  def suspended(fun) do
    case Process.delete(@key) do
      nil ->
        fun.()

      rec ->
        try do
          fun.()
        after
          Process.put(@key, rec)
        end
    end
  end

  @doc """
  Binds defn parameter `p` to the real array `ref` (done the first time
  the parameter is read) and returns its placeholder.
  """
  def bind_param(p, ref) when is_reference(ref) do
    rec = Process.get(@key)
    Process.put(@key, %{rec | params: Map.put(rec.params, p, ref)})
    {:emlx_param, p}
  end

  @doc """
  Marks the recording as one whose plan must not be cached: it reads
  arrays that are not parameters but differ between calls (the scales and
  biases of a quantized parameter, see `EMLX.Quantization`).
  """
  def no_plan do
    rec = Process.get(@key)
    Process.put(@key, %{rec | no_plan?: true})
    :ok
  end

  @doc "Records `op`; returns a placeholder (or a list of them for multi-result ops)."
  def record(op, raw_args, out_type) do
    rec = Process.get(@key)
    {args, rec} = Enum.map_reduce(raw_args, rec, &translate/2)
    count = EMLX.Ops.outputs(op)
    slots = Enum.map(rec.nouts..(rec.nouts + count - 1), &{:emlx_slot, rec.segment, {:out, &1}})

    Process.put(@key, %{
      rec
      | instrs: [{op, args, out_type} | rec.instrs],
        nouts: rec.nouts + count
    })

    if count == 1, do: hd(slots), else: slots
  end

  defp translate({:emlx_slot, seg, sym}, %{segment: seg} = rec), do: {sym, rec}

  defp translate({:emlx_slot, _, _}, %{static?: true}), do: throw(:emlx_dynamic)

  defp translate({:emlx_slot, _, _} = slot, rec) do
    real = Map.fetch!(rec.materialized, slot)
    capture(real, {:const, real}, rec)
  end

  defp translate({:emlx_param, p} = param, rec),
    do: capture(param, {:param, p}, rec)

  defp translate(ref, rec) when is_reference(ref), do: capture(ref, {:const, ref}, rec)

  defp translate(list, rec) when is_list(list) do
    if Enum.any?(list, &array_term?/1),
      do: Enum.map_reduce(list, rec, &translate/2),
      else: {list, rec}
  end

  defp translate(other, rec), do: {other, rec}

  defp array_term?({:emlx_slot, _, _}), do: true
  defp array_term?({:emlx_param, _}), do: true
  defp array_term?(ref), do: is_reference(ref)

  # Makes `term` (a real array or a parameter) an input of the current
  # segment, once: parameters are told apart by position even when two of
  # them are the same array, so a cached plan never merges them.
  defp capture(term, source, rec) do
    case rec.input_index do
      %{^term => i} ->
        {{:in, i}, rec}

      %{} ->
        i = rec.ninputs

        {{:in, i},
         %{
           rec
           | inputs: [input_ref(source, rec) | rec.inputs],
             sources: [source | rec.sources],
             ninputs: i + 1,
             input_index: Map.put(rec.input_index, term, i)
         }}
    end
  end

  defp input_ref({:const, ref}, _rec), do: ref
  defp input_ref({:param, p}, %{static?: true}), do: {:loop_state, p}
  defp input_ref({:param, p}, rec), do: Map.fetch!(rec.params, p)

  @doc "The real array behind a placeholder, flushing the segment when needed."
  def materialize(placeholder) do
    case Process.get(@key) do
      %{static?: true} -> throw(:emlx_dynamic)
      _ -> materialize_real(placeholder)
    end
  end

  defp materialize_real({:emlx_param, p}) do
    rec = Process.get(@key)
    Map.fetch!(rec.params, p)
  end

  defp materialize_real({:emlx_slot, _, _} = slot) do
    rec = Process.get(@key)

    case rec.materialized do
      %{^slot => ref} ->
        ref

      %{} ->
        rec = flush(rec)
        Process.put(@key, rec)
        Map.fetch!(rec.materialized, slot)
    end
  end

  defp materialize_real(ref) when is_reference(ref), do: ref

  @doc """
  Records `fun` (which returns a list of handles) as a program of its own
  over parameters `{:emlx_param, p}` that are never bound: returns
  `{:ok, %{program: program, sources: sources, no_plan?: boolean}}`, or
  `:dynamic` when the recording needed data (nothing has run then).
  """
  def static(fun) do
    outer = Process.get(@key)

    Process.put(@key, %__MODULE__{
      queue: outer.queue,
      device: outer.device,
      segment: make_ref(),
      static?: true
    })

    try do
      outputs = fun.()
      rec = Process.get(@key)
      {syms, rec} = Enum.map_reduce(outputs, rec, &translate/2)

      {:ok,
       %{
         program: program(rec, syms),
         sources: Enum.reverse(rec.sources),
         nouts: length(syms),
         no_plan?: rec.no_plan?
       }}
    catch
      :throw, :emlx_dynamic -> :dynamic
    after
      Process.put(@key, outer)
    end
  end

  @doc """
  Records a loop over the state `init` (handles) with the condition and
  body plans of `static/1`; returns the placeholders of the final state.
  """
  def record_while(init, cond, body) do
    rec = Process.get(@key)
    {init_syms, rec} = Enum.map_reduce(init, rec, &translate/2)
    {cond_in, rec} = Enum.map_reduce(cond.sources, rec, &loop_input/2)
    {body_in, rec} = Enum.map_reduce(body.sources, rec, &loop_input/2)
    n = length(init)
    slots = Enum.map(rec.nouts..(rec.nouts + n - 1)//1, &{:emlx_slot, rec.segment, {:out, &1}})
    # (the third element, nil for the NIF, counts the results here)
    instr = {:while, [init_syms, cond.program, cond_in, body.program, body_in], n}

    Process.put(@key, %{
      rec
      | instrs: [instr | rec.instrs],
        nouts: rec.nouts + n,
        no_plan?: rec.no_plan? or cond.no_plan? or body.no_plan?
    })

    slots
  end

  @doc """
  Records a cond over the handles `inputs`: the plans of `static/1` for
  its predicate, the branch taken when it is not zero and the other one,
  each over parameters standing for `inputs`. Returns the placeholders of
  its results.
  """
  def record_cond(inputs, pred, then, otherwise) do
    inputs = List.to_tuple(inputs)
    rec = Process.get(@key)
    {pred_in, rec} = Enum.map_reduce(pred.sources, rec, &cond_input(&1, &2, inputs))
    {then_in, rec} = Enum.map_reduce(then.sources, rec, &cond_input(&1, &2, inputs))
    {else_in, rec} = Enum.map_reduce(otherwise.sources, rec, &cond_input(&1, &2, inputs))
    n = then.nouts
    slots = Enum.map(rec.nouts..(rec.nouts + n - 1)//1, &{:emlx_slot, rec.segment, {:out, &1}})

    instr =
      {:cond, [pred.program, pred_in, then.program, then_in, otherwise.program, else_in], n}

    Process.put(@key, %{
      rec
      | instrs: [instr | rec.instrs],
        nouts: rec.nouts + n,
        no_plan?: rec.no_plan? or pred.no_plan? or then.no_plan? or otherwise.no_plan?
    })

    slots
  end

  defp cond_input({:param, p}, rec, inputs), do: translate(elem(inputs, p), rec)
  defp cond_input({:const, ref}, rec, _inputs), do: translate(ref, rec)

  # A loop program's input: an element of the loop's state, or an array of
  # the enclosing recording.
  defp loop_input({:param, p}, rec), do: {{:state, p}, rec}
  defp loop_input({:const, ref}, rec), do: translate(ref, rec)

  # Runs the current segment without mx::compile; every result becomes real.
  defp flush(rec) do
    outs = Enum.map(0..(rec.nouts - 1)//1, &{:out, &1})
    refs = run_segment(rec, outs, false)

    materialized =
      outs
      |> Enum.zip(refs)
      |> Enum.reduce(rec.materialized, fn {sym, ref}, acc ->
        Map.put(acc, {:emlx_slot, rec.segment, sym}, ref)
      end)

    # A new, empty segment; the recording's own state carries over.
    %__MODULE__{
      queue: rec.queue,
      device: rec.device,
      params: rec.params,
      segment: rec.segment + 1,
      materialized: materialized,
      flushed?: true
    }
  end

  @doc "Builds the program of a segment for the given output symbols."
  def program(rec, out_syms) do
    n = rec.ninputs

    slot = fn
      {:in, i} -> i
      {:out, j} -> n + j
    end

    instrs =
      rec.instrs
      |> Enum.reverse()
      |> EMLX.Defn.Fusion.rewrite(out_syms, rec.device)
      |> Enum.map(fn
        {:while, [init, cond, cond_in, body, body_in], _results} ->
          input = fn
            {:state, p} -> -p - 1
            sym -> slot.(sym)
          end

          {:while,
           [Enum.map(init, slot), cond, Enum.map(cond_in, input), body, Enum.map(body_in, input)],
           nil}

        {:cond, [pred, pred_in, then, then_in, otherwise, else_in], _results} ->
          {:cond,
           [
             pred,
             Enum.map(pred_in, slot),
             then,
             Enum.map(then_in, slot),
             otherwise,
             Enum.map(else_in, slot)
           ], nil}

        {op, args, out_type} ->
          {op, Enum.map(args, &renumber(&1, slot)), out_type}
      end)

    NIF.program_new(rec.queue, instrs, n, Enum.map(out_syms, slot))
  end

  defp renumber({:in, _} = s, slot), do: slot.(s)
  defp renumber({:out, _} = s, slot), do: slot.(s)

  defp renumber(list, slot) when is_list(list) do
    if Enum.any?(list, &match?({tag, _} when tag in [:in, :out], &1)),
      do: Enum.map(list, &renumber(&1, slot)),
      else: list
  end

  defp renumber(other, _slot), do: other

  defp run_segment(rec, out_syms, compile?) do
    program = program(rec, out_syms)
    NIF.program_run(rec.queue, program, Enum.reverse(rec.inputs), compile?) |> Worker.await()
  end

  @doc """
  Finishes a recording for the given output placeholders/refs. Returns
  `{refs, plan}`: the plan (for caching) when the whole function was one
  segment, else nil.
  """
  def finish(rec, outputs, fuse \\ true) do
    if rec.flushed? or rec.no_plan? do
      # Outputs of the current segment run now; older ones are real already.
      {syms, rec} = Enum.map_reduce(outputs, rec, &translate/2)
      refs = if syms == [], do: [], else: run_segment(rec, syms, false)
      {refs, nil}
    else
      {syms, rec} = Enum.map_reduce(outputs, rec, &translate/2)
      program = program(rec, syms)
      refs = run_program(rec.queue, program, Enum.reverse(rec.inputs), fuse)
      plan = %{program: program, sources: Enum.reverse(rec.sources)}
      {refs, plan}
    end
  end

  @doc """
  Runs a program under mx::compile (`fuse`, the default) or replays its
  ops plainly. A program that cannot be traced (an op needs data while
  tracing) replays plainly instead, and the program remembers it (in the
  NIF); a genuine error is raised once.
  """
  def run_program(queue, program, inputs, fuse \\ true) do
    NIF.program_run(queue, program, inputs, fuse) |> Worker.await()
  end

  @doc """
  As `run_program/4`, without waiting for the worker: the outputs come back
  pending, as an op's do, and the worker fills them in queue order. An
  error of the run is raised by their first use. (A cached plan's run: its
  program ran once already, when it was recorded.)
  """
  def post_program(queue, program, inputs, fuse \\ true),
    do: Worker.post_program(queue, program, inputs, fuse)
end
