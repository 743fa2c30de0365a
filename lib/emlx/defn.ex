defmodule EMLX.Defn do
  @moduledoc """
  The `Nx.Defn.Compiler` behind `compiler: EMLX`.

  A `defn` function is traced to an `Nx.Defn.Expr` by Nx and walked by
  `Nx.Defn.Evaluator` with `EMLX.Backend` in *recording* mode: each op
  becomes an instruction of a flat program over operand slots instead of a
  round trip to the worker thread (see `EMLX.Defn.Recorder`). The program
  is sent to the command queue's worker once, which replays it with MLX ops
  inside `mlx::core::compile` (MLX fuses element-wise chains and caches the
  traced graph; its compile cache is per thread, so compile and replay both
  run on the queue's own thread).

  The compiled plan is cached by the function, the input shapes and types,
  and the command queue (`:emlx_defn_cache` ETS table): a second call with
  the same shapes neither re-traces the Elixir function nor re-lowers it;
  it is one NIF call.

  Control flow that needs data (`while` conditions, `cond` predicates),
  hooks and runtime calls split the program into segments: each segment
  runs as one batched program (without mx::compile), the data is read, and
  recording goes on. Only the branch taken by a `cond` is evaluated, so side
  effects of other branches never run. Such functions are re-recorded on
  every call (no plan is cached); anything the recorder cannot batch runs
  through the eager backend.

  ## Options

    * `:device` - `:cpu` or `:gpu` (default `EMLX.default_device/0`)
    * `:command_queue` - an `EMLX.CommandQueue` to run on
    * `:max_concurrency` - partitions for `Nx.Serving`, each on its own queue
  """

  alias EMLX.Defn.Recorder
  alias Nx.Defn.Composite

  @table :emlx_defn_cache

  @doc false
  def __to_backend__(opts) do
    {device, _queue} = target(opts)
    {EMLX.Backend, device: device}
  end

  @doc false
  def __partitions_options__(opts) do
    n = Keyword.get(opts, :max_concurrency, 1)
    {device, _} = target(opts)
    for _ <- 1..n, do: Keyword.put(opts, :command_queue, EMLX.CommandQueue.new!(device))
  end

  @doc false
  def __jit__(key, vars, fun, args_list, opts) do
    {device, queue} = target(opts)
    Enum.map(args_list, &run(key, vars, fun, &1, opts, device, queue))
  end

  @doc false
  def __compile__(key, vars, fun, opts) do
    {device, queue} = target(opts)
    key = {key, make_ref()}
    fn args_list -> Enum.map(args_list, &run(key, vars, fun, &1, opts, device, queue)) end
  end

  @doc false
  def __shard_jit__(_key, _mesh, _vars, _fun, _args_list, _opts) do
    raise ArgumentError, "EMLX does not support sharded compilation (Nx.Defn.shard_jit)"
  end

  defp target(opts) do
    case Keyword.get(opts, :command_queue) do
      %EMLX.CommandQueue{ref: ref, device: device} ->
        {device, ref}

      nil ->
        device = Keyword.get(opts, :device) || EMLX.default_device()
        {device, EMLX.resolve_worker(device)}
    end
  end

  defp run(key, vars, fun, args, opts, device, queue) do
    tensors = Enum.map(args, fn arg -> arg.() end)

    if Recorder.active?(),
      do: inline(key, vars, fun, tensors, opts),
      else: run_cached(key, vars, fun, tensors, opts, device, queue)
  end

  # A defn called while another is being recorded joins its program.
  defp inline(key, vars, fun, tensors, opts) do
    eval = Nx.Defn.Evaluator.__compile__(key, vars, fun, Keyword.take(opts, [:hooks]))
    [result] = eval.([Enum.map(tensors, &fn -> &1 end)])
    result
  end

  defp run_cached(key, vars, fun, tensors, opts, device, queue) do
    cache_key = {key, Enum.map(tensors, &Nx.to_template/1), queue, hooks_key(opts)}

    case lookup(cache_key) do
      {:plan, plan, output} ->
        run_plan(plan, output, tensors, device, queue)

      :dynamic ->
        record(key, vars, fun, tensors, opts, device, queue) |> elem(0)

      nil ->
        {result, plan} = record(key, vars, fun, tensors, opts, device, queue)
        store(cache_key, plan, result)
        result
    end
  end

  defp hooks_key(opts), do: opts |> Keyword.get(:hooks, %{}) |> Map.keys() |> Enum.sort()

  defp lookup(cache_key) do
    case :ets.lookup(@table, cache_key) do
      [{_, value}] -> value
      [] -> nil
    end
  end

  defp store(cache_key, nil, _result), do: :ets.insert(@table, {cache_key, :dynamic})

  defp store(cache_key, plan, result) do
    output = Composite.traverse(result, &Nx.to_template/1)
    :ets.insert(@table, {cache_key, {:plan, plan, output}})
  end

  # Walks the expression with Nx's evaluator while EMLX.Backend records.
  defp record(key, vars, fun, tensors, opts, device, queue) do
    evaluator_opts = Keyword.take(opts, [:hooks])
    eval = Nx.Defn.Evaluator.__compile__(key, vars, fun, evaluator_opts)
    param_refs = Enum.map(tensors, &EMLX.Backend.ref_on(&1, device, queue))

    {{result, outputs}, rec} =
      Recorder.with_recorder(queue, device, param_refs, fn placeholders ->
        params =
          Enum.zip_with(tensors, placeholders, fn t, slot ->
            fn -> %{t | data: %EMLX.Backend{ref: slot, device: device, queue: queue}} end
          end)

        [result] =
          Nx.with_default_backend({EMLX.Backend, device: device}, fn ->
            EMLX.CommandQueue.with_queue(%EMLX.CommandQueue{ref: queue, device: device}, fn ->
              eval.([params])
            end)
          end)

        {result, collect(result)}
      end)

    {refs, plan} = Recorder.finish(rec, outputs)
    {fill(result, refs, device, queue), plan}
  end

  defp run_plan(plan, output, tensors, device, queue) do
    inputs = Enum.map(tensors, &EMLX.Backend.ref_on(&1, device, queue)) ++ plan.captured
    {refs, _} = Recorder.run_program(queue, plan.program, inputs, plan.compile?)
    fill(output, refs, device, queue)
  end

  defp collect(result) do
    {_, refs} =
      Composite.traverse(result, [], fn
        %Nx.Tensor{data: %EMLX.Backend{ref: ref}} = t, acc -> {t, [ref | acc]}
        %Nx.Tensor{} = t, _acc -> raise ArgumentError, "unexpected defn output #{inspect(t)}"
      end)

    Enum.reverse(refs)
  end

  defp fill(result, refs, device, queue) do
    {result, []} =
      Composite.traverse(result, refs, fn %Nx.Tensor{} = t, [ref | rest] ->
        {%{t | data: %EMLX.Backend{ref: ref, device: device, queue: queue}}, rest}
      end)

    result
  end
end
