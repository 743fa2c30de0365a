defmodule EMLX.Defn.Bound do
  @moduledoc false
  # A function compiled by EMLX whose leading arguments are bound once, for
  # a caller that runs it many times with the same large arguments: a
  # decoder's step takes the model's weights (hundreds of tensors: three per
  # linear layer when quantized) and a few small inputs. Called through
  # `Nx.Defn.compile/3`, every step walks every weight (Nx checks each
  # argument against its template, EMLX looks each one's array up again):
  # 4-6 ms a step on a 2-core VM for a 4-bit Qwen3-0.6B, more than MLX's
  # whole graph build. Bound, the weights' arrays are looked up once, and a
  # call walks only the arguments that change, checked against their
  # templates here.
  #
  # `new/4` compiles the function and runs it once (which records its plan,
  # as any first call does) and returns that call's result with the bound
  # function. A function without a reusable plan (an emulated type, a hook
  # splitting it, a quantized tensor argument) stays the compiled function:
  # `run/2` then calls it with all the arguments, as before; so does one
  # whose free arguments are not all tensors.

  alias EMLX.Defn.{Cache, Recorder}
  alias Nx.Defn.Composite

  defstruct [:compiled, :bound, :plan, :output, :inputs, :templates, :device, :queue, :fuse]

  @doc """
  Compiles `fun` for `args` with `opts` (those of `compiler: EMLX`), binds
  its first `nbound` arguments, and runs it once. Returns `{result, bound}`.
  """
  def new(fun, args, nbound, opts) do
    templates = Enum.map(args, &Nx.to_template/1)
    plan_key = make_ref()
    compiled = Nx.Defn.compile(fun, templates, [compiler: EMLX, plan_key: plan_key] ++ opts)
    result = apply(compiled, args)
    {bound_args, free_args} = Enum.split(args, nbound)
    bound = %__MODULE__{compiled: compiled, bound: bound_args}

    {device, queue} = EMLX.Defn.target(opts)
    key = Cache.compiled_key(queue, Keyword.get(opts, :hooks, %{}), plan_key)

    case Cache.lookup(key) do
      {:plan, plan, output} ->
        bound = %{bound | device: device, queue: queue, fuse: EMLX.Defn.fuse?(opts)}
        {result, bind(bound, plan, output, free_args)}

      _other ->
        {result, bound}
    end
  end

  @doc "Runs the bound function with the arguments after the bound ones."
  def run(%__MODULE__{plan: nil, compiled: compiled, bound: bound}, free_args),
    do: apply(compiled, bound ++ free_args)

  def run(%__MODULE__{} = b, free_args) do
    free_list = Composite.flatten_list(free_args)
    free = List.to_tuple(free_list)

    unless tuple_size(free) == tuple_size(b.templates) and same_templates?(free, b.templates, 0) do
      raise ArgumentError,
            "EMLX.Defn.Bound: the arguments do not match the templates the function was " <>
              "compiled for"
    end

    # (a quantized tensor is recorded anew each call, as EMLX.Defn does)
    if Enum.any?(free_list, &EMLX.Quantization.quantized?/1),
      do: apply(b.compiled, b.bound ++ free_args),
      else: run_plan(b, free)
  end

  defp run_plan(b, free) do
    inputs =
      Enum.map(b.inputs, fn
        {:free, i} -> EMLX.Backend.ref_on(elem(free, i), b.device, b.queue)
        ref -> ref
      end)

    fuse = EMLX.Defn.fuse_call?(b.fuse, b.plan)
    refs = Recorder.post_program(b.queue, b.plan.program, inputs, fuse)
    EMLX.Defn.fill(b.output, refs, b.device, b.queue)
  end

  defp bind(%__MODULE__{device: device, queue: queue} = bound, plan, output, free_args) do
    fixed_list = Composite.flatten_list(bound.bound)
    nfixed = length(fixed_list)
    fixed = List.to_tuple(fixed_list)
    free = Composite.flatten_list(free_args)

    if Enum.any?(fixed_list, &EMLX.Quantization.quantized?/1) or
         not Enum.all?(free, &is_struct(&1, Nx.Tensor)) do
      bound
    else
      inputs =
        Enum.map(plan.sources, fn
          {:param, p} when p < nfixed -> EMLX.Backend.ref_on(elem(fixed, p), device, queue)
          {:param, p} -> {:free, p - nfixed}
          {:const, ref} -> ref
        end)

      templates = free |> Enum.map(&template/1) |> List.to_tuple()

      %{bound | plan: plan, output: output, inputs: inputs, templates: templates}
    end
  end

  defp same_templates?(free, _templates, i) when i == tuple_size(free), do: true

  defp same_templates?(free, templates, i) do
    elem(templates, i) == template(elem(free, i)) and same_templates?(free, templates, i + 1)
  end

  defp template(%Nx.Tensor{shape: shape, type: type, vectorized_axes: axes}),
    do: {shape, type, axes}

  defp template(other), do: {:not_a_tensor, other}
end
