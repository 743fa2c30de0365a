defmodule EMLX.Defn.Recorder do
  @moduledoc false
  # Records EMLX.Backend's ops as a flat program instead of running them.
  #
  # While a recorder is active in the process, every op EMLX.Backend would
  # post to the worker (its single entry point, `EMLX.Backend.run_ref/4`)
  # becomes an instruction, and the result is a placeholder
  # `{:emlx_slot, segment, sym}` where `sym` is `{:in, i}` (an input of the
  # segment) or `{:out, j}` (an instruction result). Real arrays met on the
  # way (constants captured in the expression, data from other backends)
  # become inputs.
  #
  # When real data is needed (a `while` condition, a hook, reading a tensor
  # back), the current segment is flushed: it runs as one program, all its
  # results become real (lazy) arrays, and a new segment starts. A function
  # without such needs records as a single segment, which the compiler runs
  # under mx::compile and caches.

  alias EMLX.NIF

  @key :emlx_recorder
  @multi %{qr: 2, svd: 3, eigh: 2, lu: 3}

  defstruct [
    :queue,
    :device,
    params: [],
    segment: 0,
    instrs: [],
    nouts: 0,
    inputs: [],
    ninputs: 0,
    input_index: %{},
    materialized: %{},
    flushed?: false
  ]

  def active?, do: Process.get(@key) != nil

  @doc "Runs `fun` with a recorder whose first inputs are `params` (real refs)."
  def with_recorder(queue, device, params, fun) do
    n = length(params)

    rec = %__MODULE__{
      queue: queue,
      device: device,
      params: params,
      inputs: Enum.reverse(params),
      ninputs: n
    }

    previous = Process.get(@key)
    Process.put(@key, rec)

    try do
      result = fun.(Enum.map(0..(n - 1)//1, &{:emlx_slot, 0, {:in, &1}}))
      {result, Process.get(@key)}
    after
      if previous, do: Process.put(@key, previous), else: Process.delete(@key)
    end
  end

  @doc "Records `op`; returns a placeholder (or a list of them for multi-result ops)."
  def record(op, raw_args, out_type) do
    rec = Process.get(@key)
    {args, rec} = Enum.map_reduce(raw_args, rec, &translate/2)
    count = Map.get(@multi, op, 1)
    slots = Enum.map(rec.nouts..(rec.nouts + count - 1), &{:emlx_slot, rec.segment, {:out, &1}})

    Process.put(@key, %{
      rec
      | instrs: [{op, args, out_type} | rec.instrs],
        nouts: rec.nouts + count
    })

    if count == 1, do: hd(slots), else: slots
  end

  defp translate({:emlx_slot, seg, sym}, %{segment: seg} = rec), do: {sym, rec}

  defp translate({:emlx_slot, _, _} = slot, rec) do
    real = Map.fetch!(rec.materialized, slot)
    capture(real, rec)
  end

  defp translate(ref, rec) when is_reference(ref), do: capture(ref, rec)

  defp translate(list, rec) when is_list(list) do
    if Enum.any?(list, &array_term?/1),
      do: Enum.map_reduce(list, rec, &translate/2),
      else: {list, rec}
  end

  defp translate(other, rec), do: {other, rec}

  defp array_term?({:emlx_slot, _, _}), do: true
  defp array_term?(ref), do: is_reference(ref)

  defp capture(ref, rec) do
    case rec.input_index do
      %{^ref => i} ->
        {{:in, i}, rec}

      %{} ->
        i = rec.ninputs

        {{:in, i},
         %{
           rec
           | inputs: [ref | rec.inputs],
             ninputs: i + 1,
             input_index: Map.put(rec.input_index, ref, i)
         }}
    end
  end

  @doc "The real array behind a placeholder, flushing the segment when needed."
  def materialize({:emlx_slot, 0, {:in, i}}) do
    rec = Process.get(@key)
    Enum.at(rec.params, i)
  end

  def materialize({:emlx_slot, _, _} = slot) do
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

  def materialize(ref) when is_reference(ref), do: ref

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

    materialized =
      rec.inputs
      |> Enum.reverse()
      |> Enum.with_index()
      |> Enum.reduce(materialized, fn {ref, i}, acc ->
        Map.put(acc, {:emlx_slot, rec.segment, {:in, i}}, ref)
      end)

    %{
      rec
      | segment: rec.segment + 1,
        instrs: [],
        nouts: 0,
        inputs: [],
        ninputs: 0,
        input_index: %{},
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
      |> Enum.map(fn {op, args, out_type} ->
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
    NIF.program_run(rec.queue, program, Enum.reverse(rec.inputs), compile?) |> NIF.await()
  end

  @doc """
  Finishes a recording for the given output placeholders/refs. Returns
  `{refs, plan}`: the plan (for caching) when the whole function was one
  segment, else nil.
  """
  def finish(rec, outputs) do
    if rec.flushed? do
      # Outputs of the current segment run now; older ones are real already.
      {syms, rec} = Enum.map_reduce(outputs, rec, &translate/2)
      refs = if syms == [], do: [], else: run_segment(rec, syms, false)
      {refs, nil}
    else
      {syms, rec} = Enum.map_reduce(outputs, rec, &translate/2)
      program = program(rec, syms)
      inputs = Enum.reverse(rec.inputs)
      captured = Enum.drop(inputs, length(rec.params))
      {refs, compile?} = run_program(rec.queue, program, inputs)
      {refs, %{program: program, captured: captured, compile?: compile?, queue: rec.queue}}
    end
  end

  @doc """
  Runs a program under mx::compile; an op that cannot run under compile
  (one that needs data while tracing) falls back to a plain replay.
  """
  def run_program(queue, program, inputs, compile? \\ true) do
    if compile? do
      try do
        {NIF.program_run(queue, program, inputs, true) |> NIF.await(), true}
      rescue
        EMLX.NIFError ->
          {NIF.program_run(queue, program, inputs, false) |> NIF.await(), false}
      end
    else
      {NIF.program_run(queue, program, inputs, false) |> NIF.await(), false}
    end
  end
end
