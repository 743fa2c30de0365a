defmodule EMLX.Defn.Callbacks do
  @moduledoc false
  # Hooks and runtime calls run user code in the middle of a recording.
  # The tensors they receive must be real arrays for their whole life (the
  # code may keep them, send them away or read them after the recording),
  # never recorder placeholders. `wrap/2` wraps the traced function so that
  # every hook callback and runtime-call function in its expression hands
  # over tensors backed by real arrays; `realizing/1` does the same for one
  # callback (the `:hooks` option). `wrap/2` also hands each `while` node to
  # `EMLX.Defn.Loop`, which runs loops on the worker thread.

  alias Nx.Defn.{Composite, Expr, Tree}
  alias Nx.Tensor, as: T

  @doc """
  The traced function `fun`, with callbacks in its expression realizing
  their input and loops run by `EMLX.Defn.Loop`. `opts` are the compiler's.
  """
  #
  # An expression with a type MLX lacks (EMLX.Types.emulated/0) anywhere is
  # left as it is, to run op by op on EMLX.Backend, and `on_emulated` is
  # called.
  def wrap(fun, opts, on_emulated \\ fn -> :ok end) do
    fn vars ->
      expr = fun.(vars)

      if EMLX.Backend.Emulated.expr?(expr) do
        on_emulated.()
        expr
      else
        opts = Keyword.put(opts, :emlx_scope, EMLX.Defn.Sub.eager_ids(expr))
        {expr, _seen} = Composite.traverse(expr, %{}, &rewrite(&1, &2, opts))
        expr
      end
    end
  end

  @doc "The options for Nx's evaluator: hooks given in `opts` realize their input."
  def evaluator_opts(opts) do
    case Keyword.fetch(opts, :hooks) do
      {:ok, hooks} -> [hooks: Map.new(hooks, fn {name, f} -> {name, realizing(f)} end)]
      :error -> []
    end
  end

  @doc "The one-argument callback `f`, called with real arrays."
  def realizing(nil), do: nil

  def realizing(f) when is_function(f, 1),
    do: fn value -> f.(realize(uncached(value))) end

  defp realizing2(f) when is_function(f, 2),
    do: fn value, opts -> f.(realize(uncached(value)), opts) end

  # A callback must run on every call: a recording that runs one caches no
  # plan (a plan would replay its ops and skip the callback). One whose
  # value needs the data splits the recording and caches none anyway; this
  # covers the rest, such as a hook on a parameter or a constant.
  defp uncached(value) do
    if EMLX.Defn.Recorder.active?(), do: EMLX.Defn.Recorder.no_plan()
    value
  end

  # The container with every EMLX tensor backed by a real array.
  defp realize(container) do
    Composite.traverse(container, fn
      %T{data: %EMLX.Backend{} = data} = t -> %{t | data: EMLX.Backend.realize(data)}
      other -> other
    end)
  end

  # One visit per expression id; a node keeps its id, so Nx's evaluator
  # caches work as before.
  # By id, the rewritten node; each occurrence keeps its own tensor struct
  # (a vectorized and a devectorized view share one node).
  defp rewrite(%T{data: %Expr{id: id}} = t, seen, opts) do
    case seen do
      %{^id => done} ->
        {%{t | data: done}, seen}

      %{} ->
        {done, seen} = rewrite_node(t, seen, opts)
        {done, Map.put(seen, id, done.data)}
    end
  end

  defp rewrite(other, seen, _opts), do: {other, seen}

  # A loop's condition and body are rewritten when the loop runs, a cond's
  # predicates and branches when it runs (each as a scope of its own).
  defp rewrite_node(%T{data: %Expr{op: :while, args: [initial | _]}} = t, seen, opts) do
    {initial, seen} = Composite.traverse(initial, seen, &rewrite(&1, &2, opts))
    {EMLX.Defn.Loop.rewrite(t, initial, compiler_opts(opts)), seen}
  end

  defp rewrite_node(%T{data: %Expr{op: :cond, id: id}} = t, seen, opts) do
    scope = Keyword.fetch!(opts, :emlx_scope)

    with true <- Map.has_key?(scope, id),
         {done, seen} <-
           EMLX.Defn.Cond.rewrite(t, scope, compiler_opts(opts), seen, &rewrite(&1, &2, opts)) do
      {done, seen}
    else
      _ -> rewrite_args(t, seen, opts)
    end
  end

  # A block (`Nx.Block`: linear algebra, FFT2, top_k...) runs EMLX.Backend's
  # kernel when it has one; else the backend calls the block's callback,
  # which traces Nx's default implementation again and runs it through Nx's
  # evaluator: a loop there is a read-back and a new program per iteration
  # (Nx's QR, SVD and eigh under `linalg: :nx`). When the body loops, the
  # callback becomes the block's body, traced once already, evaluated into
  # the recording with its loops run by `EMLX.Defn.Loop`. A body without a
  # loop keeps the callback: it runs on real tensors, as eagerly (an f64
  # EMLX.Fast reference then rounds its float constants to f32 as eager Nx
  # does, where a traced body keeps them exact).
  defp rewrite_node(%T{data: %Expr{op: :block, args: args}} = t, seen, opts) do
    [struct, in_args, body, callback] = args
    {in_args, seen} = Enum.map_reduce(in_args, seen, &rewrite(&1, &2, opts))

    callback =
      (loops?(body) &&
         EMLX.Defn.Sub.block_callback(body, length(in_args) + 1, compiler_opts(opts))) ||
        callback

    {put_in(t.data.args, [struct, in_args, body, callback]), seen}
  end

  defp rewrite_node(t, seen, opts), do: rewrite_args(t, seen, opts)

  defp rewrite_args(t, seen, opts) do
    {args, seen} = Tree.apply_args(t, :all, seen, &rewrite(&1, &2, opts))
    {put_in(t.data.args, callbacks(t.data.op, args)), seen}
  end

  # Whether `expr` holds a `while`, nested blocks' bodies included.
  defp loops?(expr) do
    {_, found} = Composite.traverse(expr, {%{}, false}, &loop_node/2)
    elem(found, 1)
  end

  defp loop_node(t, {_, true} = acc), do: {t, acc}

  defp loop_node(%T{data: %Expr{id: id, op: op}} = t, {seen, false}) do
    cond do
      Map.has_key?(seen, id) ->
        {t, {seen, false}}

      op == :while ->
        {t, {seen, true}}

      true ->
        {_, acc} = Tree.apply_args(t, :all, {Map.put(seen, id, true), false}, &loop_node/2)
        {t, acc}
    end
  end

  defp loop_node(other, acc), do: {other, acc}

  defp compiler_opts(opts), do: Keyword.delete(opts, :emlx_scope)

  # A callback's input is read devectorized, as Nx's evaluator reads every
  # other node: a vectorized view makes the evaluator, when it meets the
  # node there first, call the backend with a vectorized output template
  # (a reshape to the vectorized shape alone, of an array that holds every
  # entry), and hand the callback a vectorized or a devectorized tensor by
  # the order of the walk.
  defp callbacks(:hook, [expr, spec, template, ref]),
    do: [devectorized(expr), spec(spec), template, ref]

  defp callbacks(:runtime_call, [expr, f, template, opts]),
    do: [devectorized(expr), realizing2(f), template, opts]

  defp callbacks(_op, args), do: args

  defp spec({:fn, f}), do: {:fn, realizing(f)}
  defp spec({:named, name, f}), do: {:named, name, realizing(f)}
  defp spec({:token_hook, expr, inner}), do: {:token_hook, devectorized(expr), spec(inner)}
  defp spec(other), do: other

  defp devectorized(expr), do: Composite.traverse(expr, &Nx.devectorize(&1, keep_names: false))
end
