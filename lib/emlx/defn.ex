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

  The compiled plan is cached (`EMLX.Defn.Cache`) under a key that holds
  everything the trace depends on: the function with a fingerprint of what
  it captures (non-tensor arguments such as options among them), the
  argument containers with their structure and non-tensor fields, each
  tensor's type, shape, names and vectorized axes, the command queue and
  the active hooks. A second such call neither re-traces the Elixir
  function nor re-lowers it; it is one NIF call. Inputs are lazy: an input
  the computation never reads is never materialized (`Nx.template/2`
  arguments work), and tensors handed to hooks and runtime calls are real
  arrays that outlive the call. At most `config :emlx, :plan_cache_size`
  plans are kept (default 512), the oldest dropped first.

  Control flow runs on the worker thread too: a `while` records as one loop
  instruction whose condition and body are programs of their own, compiled
  by mx::compile once (`EMLX.Defn.Loop`; inside a loop body, a `cond`
  without side effects is computed as selects), and a `cond` as one
  instruction that reads its predicate and runs only the branch taken
  (`EMLX.Defn.Cond`). Such a function is still one cached plan, with no
  BEAM round trip per iteration. Hooks and runtime calls split the program
  into segments: each segment runs as one batched program (without
  mx::compile), the data is read, and recording goes on; a loop or a
  branch holding one runs from the BEAM (only the branch taken is
  evaluated, so side effects of other branches never run), and such
  functions are re-recorded on every call (no plan is cached). Anything the
  recorder cannot batch runs through the eager backend.

  A function with a type MLX lacks (c128, f8, sub-byte integers; see
  `EMLX.Types`) in its inputs, outputs or any node of its expression is
  not recorded: Nx's evaluator runs it op by op on `EMLX.Backend`, which
  computes those types with Nx.BinaryBackend's implementation, so it gives
  what Nx's evaluator on Nx.BinaryBackend gives (gradients included). The
  expression is walked once, when it is traced; the evaluator is cached as
  its plan.

  ## Options

    * `:device` - `:cpu` or `:gpu` (default `EMLX.default_device/0`)
    * `:command_queue` - an `EMLX.CommandQueue` to run on
    * `:max_concurrency` - partitions for `Nx.Serving`, each on its own queue
    * `:fuse` - `true` (default) runs the plan under `mx::compile`, which
      fuses element-wise chains; `false` replays its MLX ops one by one, as
      an eager MLX program runs them (the same kernels, hence the same
      rounding in half precision: `EMLX.LLM.Qwen3` uses it to give mlx-lm's
      tokens exactly on the GPU)

  `config :emlx, :fuse_after, n` (default 0) runs a plan's first `n` calls
  without `mx::compile`, and fuses from call `n + 1` on. MLX builds each
  new fused kernel with the C++ compiler on the CPU (about a second each)
  and NVRTC on the GPU, so a function called once or twice (a test suite,
  a script, a model fitted once) costs less unfused; a training step
  called thousands of times is fused after its first `n`. Half-precision
  results of the first calls then round as eager ops do (see `:fuse`).
  """

  alias EMLX.CommandQueue
  alias EMLX.Defn.{Cache, Callbacks, Recorder}
  alias Nx.Defn.Composite

  @doc false
  def __to_backend__(opts) do
    {device, _queue} = target(opts)
    {EMLX.Backend, device: device}
  end

  @doc false
  def __partitions_options__(opts) do
    n = Keyword.get(opts, :max_concurrency, 1)
    {device, _} = target(opts)
    for _ <- 1..n, do: Keyword.put(opts, :command_queue, CommandQueue.new!(device))
  end

  @doc false
  def __jit__(key, vars, fun, args_list, opts) do
    {device, queue} = target(opts)
    Enum.map(args_list, &run(key, vars, fun, &1, opts, device, queue, nil))
  end

  @doc false
  def __compile__(key, vars, fun, opts) do
    {device, queue} = target(opts)
    # The parameters are fixed here, and Nx checks each call's arguments
    # against them: one small cache key serves every call.
    cache_key = Cache.compiled_key(queue, Keyword.get(opts, :hooks, %{}), opts[:plan_key])

    fn args_list ->
      Enum.map(args_list, &run(key, vars, fun, &1, opts, device, queue, cache_key))
    end
  end

  @doc false
  def __shard_jit__(_key, _mesh, _vars, _fun, _args_list, _opts) do
    raise ArgumentError, "EMLX does not support sharded compilation (Nx.Defn.shard_jit)"
  end

  @doc false
  # Whether plans run under mx::compile (the `:fuse` option, on by default).
  def fuse?(opts), do: Keyword.get(opts, :fuse, true)

  @doc false
  # How many calls of a plan run unfused first (`config :emlx, :fuse_after`).
  def fuse_after, do: Application.get_env(:emlx, :fuse_after, 0)

  @doc false
  # A new plan (its recording was call 1) with its call counter.
  def counted(nil), do: nil
  def counted(plan), do: Map.put(plan, :calls, :counters.new(1, [:write_concurrency]))

  @doc false
  # Whether this call of `plan` fuses: `fuse` once the plan has run
  # `fuse_after` times.
  def fuse_call?(false, _plan), do: false

  def fuse_call?(true, %{calls: calls}) do
    case fuse_after() do
      0 ->
        true

      n ->
        :counters.add(calls, 1, 1)
        :counters.get(calls, 1) >= n
    end
  end

  @doc false
  def target(opts) do
    case Keyword.get(opts, :command_queue) do
      %CommandQueue{ref: ref, device: device} ->
        {device, ref}

      nil ->
        device = Keyword.get(opts, :device) || CommandQueue.default_device()
        {device, CommandQueue.resolve(device)}
    end
  end

  # `args` are Nx's lazy parameters: each is called (and its tensor moved
  # to MLX) only when the computation reads it.
  defp run(key, vars, fun, args, opts, device, queue, cache_key) do
    if Recorder.active?() do
      inline(key, vars, fun, args, opts)
    else
      opts = Keyword.put(opts, :fuse, fuse?(opts))

      cache_key =
        cache_key || Cache.key({key, opts[:fuse]}, vars, queue, Keyword.get(opts, :hooks, %{}))

      run_cached(cache_key, vars, fun, args, opts, device, queue)
    end
  end

  # A defn called while another is being recorded joins its program.
  defp inline(key, vars, fun, args, opts) do
    eval =
      Nx.Defn.Evaluator.__compile__(key, vars, Callbacks.wrap(fun, opts), evaluator_opts(opts))

    [result] = eval.([args])
    result
  end

  defp run_cached(cache_key, vars, fun, args, opts, device, queue) do
    case Cache.lookup(cache_key) do
      {:plan, plan, output} ->
        run_plan(plan, output, args, device, queue, opts[:fuse]) ||
          record(vars, fun, args, opts, device, queue) |> elem(0)

      :emulated ->
        run_eager(eager_eval(cache_key, vars, fun, opts), args, device, queue)

      :dynamic ->
        record(vars, fun, args, opts, device, queue) |> elem(0)

      nil ->
        {result, plan} = record(vars, fun, args, opts, device, queue)
        with {:eager, eval} <- plan, do: remember_eager(cache_key, eval)
        Cache.store(cache_key, cache_value(plan, result))
        result
    end
  end

  defp cache_value(nil, _result), do: :dynamic
  defp cache_value({:eager, _eval}, _result), do: :emulated
  defp cache_value(plan, result), do: {:plan, plan, Composite.traverse(result, &Nx.to_template/1)}

  # Hooks (and runtime calls) receive tensors backed by real arrays.
  defp evaluator_opts(opts), do: Callbacks.evaluator_opts(opts)

  # Walks the expression with Nx's evaluator while EMLX.Backend records;
  # an expression with a type MLX lacks runs op by op instead (its
  # evaluator is the cached plan).
  defp record(vars, fun, args, opts, device, queue) do
    case compile(vars, fun, opts) do
      {eval, :emulated} -> {run_eager(eval, args, device, queue), {:eager, eval}}
      {eval, :native} -> record(eval, args, opts, device, queue)
    end
  end

  # Nx's evaluator for `fun`, and whether its expression holds a type MLX
  # lacks (EMLX.Types.emulated/0), found by one walk while it is traced.
  defp compile(vars, fun, opts) do
    flag = {__MODULE__, :emulated, make_ref()}
    wrapped = Callbacks.wrap(fun, opts, fn -> Process.put(flag, true) end)

    try do
      eval = Nx.Defn.Evaluator.__compile__(nil, vars, wrapped, evaluator_opts(opts))
      {eval, if(Process.get(flag), do: :emulated, else: :native)}
    after
      Process.delete(flag)
    end
  end

  # An emulated program's evaluator is kept in the calling process (the
  # last @eager_kept of them), never in the plan cache's ETS table: the
  # closure holds the traced expression, and ETS copies a term without its
  # sharing (a c128 FFT beside an eigh block made 19,414 words a
  # 5,172,086,361-word copy, and the VM went down). The table only says
  # that the program runs eagerly; another process compiles its own.
  @eager_evals {__MODULE__, :eager_evals}
  @eager_kept 8

  defp eager_eval(key, vars, fun, opts) do
    case List.keyfind(Process.get(@eager_evals, []), key, 0) do
      {_, eval} ->
        eval

      nil ->
        {eval, _} = compile(vars, fun, opts)
        remember_eager(key, eval)
        eval
    end
  end

  defp remember_eager(:uncached, _eval), do: :ok

  defp remember_eager(key, eval) do
    kept = Process.get(@eager_evals, []) |> List.keydelete(key, 0)
    Process.put(@eager_evals, Enum.take([{key, eval} | kept], @eager_kept))
    :ok
  end

  # Types MLX lacks: Nx's evaluator runs the expression op by op on
  # EMLX.Backend (EMLX.Backend.Emulated computes those types), on `device`
  # and `queue`; inputs and outputs are EMLX tensors there.
  defp run_eager(eval, args, device, queue) do
    params = Enum.map(args, fn arg -> fn -> on_device(arg.(), device) end end)

    [result] = on_target(device, queue, fn -> eval.([params]) end)
    Composite.traverse(result, &on_device(&1, device))
  end

  # Runs `fun` with EMLX.Backend on `device` as the default backend and
  # `queue` as this process's queue for it.
  defp on_target(device, queue, fun) do
    Nx.with_default_backend({EMLX.Backend, device: device}, fn ->
      CommandQueue.with_queue(%CommandQueue{ref: queue, device: device}, fun)
    end)
  end

  defp on_device(%Nx.Tensor{data: %EMLX.Backend{device: device}} = t, device), do: t
  defp on_device(%Nx.Tensor{} = t, device), do: Nx.backend_copy(t, {EMLX.Backend, device: device})

  defp record(eval, args, opts, device, queue) do
    {{result, outputs}, rec} =
      Recorder.with_recorder(queue, device, fn ->
        params =
          args
          |> Enum.with_index()
          |> Enum.map(fn {arg, p} ->
            fn ->
              # A lazy container computes its tensor here, eagerly: the
              # parameter is a real array, and the plan stays valid.
              t = Recorder.suspended(arg)
              param = Recorder.bind_param(p, EMLX.Backend.ref_on(t, device, queue))
              keep_quantization(%{t | data: EMLX.Backend.data(param, device, queue)}, t)
            end
          end)

        [result] = on_target(device, queue, fn -> eval.([params]) end)
        {result, collect(result, device, queue)}
      end)

    {refs, plan} = Recorder.finish(rec, outputs, opts[:fuse] and fuse_after() == 0)
    {fill(result, refs, device, queue), counted(plan)}
  end

  # A quantized parameter (EMLX.Quantization) keeps its scales and biases;
  # they are arrays of this call, so the recording caches no plan.
  defp keep_quantization(param, %Nx.Tensor{data: %EMLX.Backend{quantization_config: %{} = c}}) do
    Recorder.no_plan()
    %{param | data: %{param.data | quantization_config: c}}
  end

  defp keep_quantization(param, _arg), do: param

  # Nil when an argument is quantized: the key cannot tell an 8-bit
  # quantized weight from a plain s8 tensor of its shape, and a quantized
  # argument is recorded anew each call (see keep_quantization/2).
  defp run_plan(plan, output, args, device, queue, fuse) do
    args = List.to_tuple(args)

    inputs =
      Enum.reduce_while(plan.sources, [], fn
        {:param, p}, acc ->
          case elem(args, p).() do
            %Nx.Tensor{data: %EMLX.Backend{quantization_config: %{}}} -> {:halt, nil}
            t -> {:cont, [EMLX.Backend.ref_on(t, device, queue) | acc]}
          end

        {:const, ref}, acc ->
          {:cont, [ref | acc]}
      end)

    if inputs do
      fuse = fuse_call?(fuse, plan)
      refs = Recorder.post_program(queue, plan.program, Enum.reverse(inputs), fuse)
      fill(output, refs, device, queue)
    end
  end

  # The array (or placeholder) behind each output; a literal tensor the
  # function returns (data of another backend) becomes an MLX constant.
  defp collect(result, device, queue) do
    {_, refs} =
      Composite.traverse(result, [], fn
        %Nx.Tensor{data: %EMLX.Backend{} = data} = t, acc ->
          {t, [EMLX.Backend.handle(data) | acc]}

        %Nx.Tensor{} = t, acc ->
          {t, [EMLX.Backend.ref_on(t, device, queue) | acc]}
      end)

    Enum.reverse(refs)
  end

  @doc false
  def fill(result, refs, device, queue) do
    {result, []} =
      Composite.traverse(result, refs, fn %Nx.Tensor{} = t, [ref | rest] ->
        EMLX.GC.produced(t, :program, ref)
        {%{t | data: EMLX.Backend.data(ref, device, queue)}, rest}
      end)

    result
  end
end
