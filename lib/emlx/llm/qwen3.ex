defmodule EMLX.LLM.Qwen3 do
  @moduledoc """
  A Qwen3-style decoder over `EMLX.Fast`, compiled with `compiler: EMLX`,
  reading an mlx-lm model folder (`config.json` and `model*.safetensors`,
  as `mlx_lm.convert` and mlx-lm's `save_model` write them: bf16/f16/f32,
  or affine-quantized with the packed `weight`, `scales` and `biases` per
  layer, tied or untied embeddings, a quantized embedding included).

      model = EMLX.LLM.Qwen3.load("path/to/model", device: :cpu)
      {[tokens], stats} = EMLX.LLM.Qwen3.generate(model, [[1, 2, 3]], max_tokens: 32)

  The architecture is mlx-lm's `qwen3.Model`: RMS norms (`EMLX.Fast.rms_norm/3`,
  Qwen3's per-head `q_norm` and `k_norm` included), split-half RoPE
  (`EMLX.Fast.rope/6`), grouped-query attention
  (`EMLX.Fast.scaled_dot_product_attention/5`), a SwiGLU MLP, and linear
  layers that are dense dots or `mx::quantized_matmul`
  (`EMLX.Quantization.Packed.matmul/5`).

  Decoding is greedy and follows `mlx_lm.generate`'s order of work, so
  that a bf16 or quantized model gives mlx-lm's tokens exactly: the prompt
  but its last token runs as one compiled prefill call, then each step
  (the last prompt token first) is one compiled call that returns the
  next token and the updated KV cache. The cache, `{B, N_kv, T_max, D}`
  per layer (mlx-lm's layout), is kept as device arrays between steps and
  written at the step's offset (`Nx.put_slice/3` with a tensor offset).
  Its length grows as mlx-lm's does, by 256 positions when a step would
  write past its end, so the step's plan is recorded once per 256
  positions and then reused. Each step attends the
  cache's filled prefix as mlx-lm does
  (`EMLX.Fast.scaled_dot_product_attention_cached/5`: the same fused SDPA
  call over the same keys), and the plans replay their MLX ops without
  `mx::compile` (`fuse: false`), so every kernel, and every rounding in
  half precision, is mlx-lm's on the CPU and on the GPU. As in
  `mlx_lm.generate`, the next step is posted and started (`EMLX.async_eval/1`)
  before the current token is read.
  Log-probabilities are `logits - logsumexp(logits)` in the model's type
  (`EMLX.Fast.logsumexp/2`) and the token their first argmax, as mlx-lm's
  greedy sampler.

  Several prompts decode as one batch; prompts of different lengths are
  left-padded, with per-token RoPE positions and key masks.
  """

  alias EMLX.Fast
  alias EMLX.Quantization.Packed

  @enforce_keys [:config, :params, :device, :id]
  defstruct [:config, :params, :device, :id, fuse: false]

  @type t :: %__MODULE__{
          config: map(),
          params: map(),
          device: :cpu | :gpu,
          id: reference(),
          fuse: boolean()
        }

  ## Loading

  @doc """
  Loads an mlx-lm model folder: `config.json` (model_type `"qwen3"`) and
  every `model*.safetensors` in it. Options: `:device` (default
  `EMLX.default_device/0`) and `:fuse` (default `false`: the prefill and
  step plans replay MLX's ops one by one, as mlx-lm runs them; `true`
  runs them under `mx::compile`, see `EMLX`'s `:fuse` option).
  """
  @spec load(Path.t(), keyword()) :: t()
  def load(dir, opts \\ []) do
    opts = Keyword.validate!(opts, [:device, fuse: false])
    device = opts[:device] || EMLX.default_device()
    raw = dir |> Path.join("config.json") |> File.read!() |> JSON.decode!()
    config = model_config!(raw)
    files = dir |> Path.join("model*.safetensors") |> Path.wildcard() |> Enum.sort()

    if files == [] do
      raise ArgumentError, "EMLX.LLM.Qwen3.load/2: no model*.safetensors in #{dir}"
    end

    weights =
      Enum.reduce(files, %{}, fn file, acc ->
        Map.merge(acc, EMLX.load_safetensors(file, device: device))
      end)

    weights =
      case raw["quantization"] do
        nil -> weights
        quantization -> EMLX.Quantization.from_packed(weights, quantization)
      end

    %__MODULE__{
      config: config,
      params: params(weights, config),
      device: device,
      id: make_ref(),
      fuse: opts[:fuse] == true
    }
  end

  defp model_config!(%{"model_type" => "qwen3"} = c) do
    # mlx-lm reads the scaling from rope_scaling, else from transformers 5's
    # rope_parameters; only plain RoPE (no type, or "default") is supported.
    scaling = c["rope_scaling"] || c["rope_parameters"] || %{}

    unless (scaling["type"] || scaling["rope_type"]) in [nil, "default"] do
      raise ArgumentError, "EMLX.LLM.Qwen3: rope scaling #{inspect(scaling)} is not supported"
    end

    theta = c["rope_theta"] || get_in(c, ["rope_parameters", "rope_theta"])

    %{
      hidden: c["hidden_size"],
      layers: c["num_hidden_layers"],
      heads: c["num_attention_heads"],
      kv_heads: c["num_key_value_heads"],
      head_dim: c["head_dim"],
      vocab: c["vocab_size"],
      eps: c["rms_norm_eps"],
      theta: theta,
      tie: Map.get(c, "tie_word_embeddings", true)
    }
  end

  defp model_config!(c) do
    raise ArgumentError,
          "EMLX.LLM.Qwen3: expected an mlx-lm config.json with model_type \"qwen3\", " <>
            "got #{inspect(c["model_type"])}"
  end

  # Plain tensors only (a quantized linear is its packed weight, scales and
  # biases), so the compiled plans take them as ordinary parameters.
  defp params(w, config) do
    layer = fn i ->
      p = "model.layers.#{i}."

      %{
        input_norm: fetch!(w, p <> "input_layernorm.weight"),
        post_norm: fetch!(w, p <> "post_attention_layernorm.weight"),
        q_norm: fetch!(w, p <> "self_attn.q_norm.weight"),
        k_norm: fetch!(w, p <> "self_attn.k_norm.weight"),
        q: linear_params(w, p <> "self_attn.q_proj"),
        k: linear_params(w, p <> "self_attn.k_proj"),
        v: linear_params(w, p <> "self_attn.v_proj"),
        o: linear_params(w, p <> "self_attn.o_proj"),
        gate: linear_params(w, p <> "mlp.gate_proj"),
        up: linear_params(w, p <> "mlp.up_proj"),
        down: linear_params(w, p <> "mlp.down_proj")
      }
    end

    params = %{
      embed: linear_params(w, "model.embed_tokens"),
      norm: fetch!(w, "model.norm.weight"),
      layers: List.to_tuple(Enum.map(0..(config.layers - 1), layer))
    }

    if config.tie, do: params, else: Map.put(params, :lm_head, linear_params(w, "lm_head"))
  end

  defp linear_params(w, prefix) do
    weight = fetch!(w, prefix <> ".weight")

    if EMLX.Quantization.quantized?(weight),
      do: Map.take(EMLX.Quantization.parts(weight), [:weight, :scales, :biases]),
      else: %{weight: weight}
  end

  defp fetch!(w, name) do
    case w do
      %{^name => t} -> t
      _ -> raise ArgumentError, "EMLX.LLM.Qwen3: the model has no tensor #{inspect(name)}"
    end
  end

  ## Generation

  @doc """
  Greedy decoding of a batch of prompts (lists of token ids, at least one
  each): returns `{tokens, stats}`, one list of `max_tokens` new ids per
  prompt, and `%{prefill_s: ..., decode_s: ..., prompt_tokens: ...}`
  (seconds to the first new token, and for the ones after it).

  Options: `:max_tokens` (default 32), `:max_length` (at least the longest
  prompt plus `max_tokens` less one, the default: the KV cache's length
  for left-padded prompts; prompts of one length start with a cache of
  their length rounded up to a multiple of 256 that grows by 256 as
  mlx-lm's does, so that MLX attends it with the same kernels),
  `:pad_id` (default 0).
  """
  @spec generate(t(), [[non_neg_integer()]], keyword()) :: {[[non_neg_integer()]], map()}
  def generate(%__MODULE__{} = model, prompts, opts \\ []) do
    opts = Keyword.validate!(opts, [:max_length, max_tokens: 32, pad_id: 0])
    n = opts[:max_tokens]
    lengths = Enum.map(prompts, &length/1)
    longest = Enum.max(lengths)

    if Enum.any?(lengths, &(&1 == 0)) or n < 1 do
      raise ArgumentError, "EMLX.LLM.Qwen3.generate/3: prompts must be non-empty, max_tokens >= 1"
    end

    # The last step writes its token's keys at longest + n - 2.
    needed = longest + n - 1

    if opts[:max_length] && opts[:max_length] < needed do
      raise ArgumentError,
            "EMLX.LLM.Qwen3.generate/3: max_length #{opts[:max_length]} is shorter than the " <>
              "longest prompt (#{longest}) plus max_tokens (#{n}) less one"
    end

    batch = length(prompts)
    pads = Enum.map(lengths, &(longest - &1))
    ids = Enum.map(prompts, &(List.duplicate(opts[:pad_id], longest - length(&1)) ++ &1))
    backend = {EMLX.Backend, device: model.device}
    pads_t = Nx.tensor(pads, type: :s32, backend: backend)
    padded? = Enum.any?(pads, &(&1 > 0))
    # A left-padded batch's caches have their full length from the start;
    # unpadded ones grow as mlx-lm's (see grow/4).
    t_max = if padded?, do: opts[:max_length] || needed, else: steps_of(longest - 1)

    t0 = System.monotonic_time()
    caches = empty_caches(model, batch, t_max)

    caches =
      if longest > 1 do
        prefix = Nx.tensor(Enum.map(ids, &Enum.drop(&1, -1)), type: :s32, backend: backend)
        prefill(model, prefix, caches, pads_t, padded?)
      else
        caches
      end

    last = Nx.tensor(Enum.map(ids, &[List.last(&1)]), type: :s32, backend: backend)
    offset_at = &Nx.tensor(longest - 1 + &1, type: :s32, backend: backend)

    post_step = fn input, caches, i ->
      caches = grow(model, caches, longest - 1 + i, padded?)
      {_, _, t_max, _} = elem(elem(caches, 0), 0).shape
      args = [model.params, input, caches, offset_at.(i), pads_t]
      out = step(model, {batch, t_max, padded?}, args)
      # The posted step's graph holds the last caches now. Letting go of
      # EMLX's own hold (before the step is evaluated) lets MLX write each
      # new key and value into the cache's buffer in place, as mlx-lm's
      # cache does, instead of copying every cache whole at every step.
      release(caches)
      out
    end

    # As mlx_lm.generate, step i + 1's graph is built from step i's lazy
    # token before that token is read, so the device runs step i while the
    # host builds step i + 1. Then step i's token is read, and only then is
    # step i + 1 started (async_eval): the worker launches its kernels while
    # the BEAM prepares the call of step i + 2. Started before the read, the
    # launches would sit ahead of the read in the worker's queue, and the
    # BEAM would wait for them at every step.
    first = EMLX.async_eval(post_step.(last, caches, 0))

    {tokens, t1, _} =
      Enum.reduce(0..(n - 1), {[], nil, first}, fn i, {acc, t1, {next, caches}} ->
        pending = if i + 1 < n, do: post_step.(Nx.reshape(next, {batch, 1}), caches, i + 1)
        row = Nx.to_flat_list(next)
        t1 = t1 || System.monotonic_time()
        {[row | acc], t1, pending && EMLX.async_eval(pending)}
      end)

    t2 = System.monotonic_time()
    seconds = &(System.convert_time_unit(&1, :native, :microsecond) / 1.0e6)

    per_prompt = tokens |> Enum.reverse() |> Enum.zip_with(& &1)
    stats = %{prefill_s: seconds.(t1 - t0), decode_s: seconds.(t2 - t1), prompt_tokens: longest}
    {per_prompt, stats}
  end

  defp release(caches) do
    for {k, v} <- Tuple.to_list(caches), t <- [k, v], do: Nx.backend_deallocate(t)
    :ok
  end

  # Unpadded caches grow as mlx-lm's KV cache does: they start at the
  # prompt prefix's length rounded up to a multiple of 256, and a step that
  # writes past the end first appends 256 positions (a new plan per length,
  # recorded once). MLX's CUDA attention picks its kernel by the cache's
  # length: once 256 keys or more are attended, the prefix of a cache whose
  # length is a multiple of 256 goes to cuDNN's fused SDPA, which rounds by
  # that length, and any other cache to MLX's own vector kernel. With one
  # fixed length (272 for 16 + 256 tokens), a 256-token decode parted from
  # mlx-lm's after 240 tokens. A left-padded batch attends its whole cache
  # under a key mask, which MLX always gives its vector kernel: its caches
  # keep the length they start with.
  @kv_step 256
  defp steps_of(n), do: max(div(n + @kv_step - 1, @kv_step), 1) * @kv_step

  defp grow(_model, caches, _offset, true = _padded?), do: caches

  defp grow(model, caches, offset, false) do
    {b, n_kv, t_max, d} = elem(elem(caches, 0), 0).shape

    if offset < t_max do
      caches
    else
      more = zeros(model, {b, n_kv, @kv_step, d})

      grown =
        for {k, v} <- Tuple.to_list(caches) do
          {Nx.concatenate([k, more], axis: 2), Nx.concatenate([v, more], axis: 2)}
        end

      release(caches)
      List.to_tuple(grown)
    end
  end

  # A block of cache positions: zeros of the model's type on its device.
  defp zeros(%__MODULE__{params: params, device: device}, shape) do
    Nx.tensor(0, type: params.norm.type, backend: {EMLX.Backend, device: device})
    |> Nx.broadcast(shape)
  end

  defp empty_caches(%__MODULE__{config: c, device: device} = model, batch, t_max) do
    cache = zeros(model, {batch, c.kv_heads, t_max, c.head_dim})

    List.to_tuple(
      for _ <- 1..c.layers, do: {cache, Nx.backend_copy(cache, {EMLX.Backend, device: device})}
    )
  end

  # One compiled call: the prompt prefix into the caches.
  defp prefill(%__MODULE__{config: c} = model, ids, caches, pads, padded?) do
    fun =
      Nx.Defn.jit(&prefill_step(&1, &2, &3, &4, padded?, c),
        compiler: EMLX,
        device: model.device,
        fuse: model.fuse
      )

    fun.(model.params, ids, caches, pads)
  end

  # The step, compiled once per model, batch size and cache length and kept
  # for the VM's life, with the model's weights bound (EMLX.Defn.Bound): a
  # step's call walks only the caches and the token, not every weight. A
  # serving keeps the cache length fixed, so it compiles one step per batch
  # size.
  defp step(%__MODULE__{config: c} = model, {_, _, padded?} = shape, [_params | free] = args) do
    key = {__MODULE__, model.id, :step, shape}

    case :persistent_term.get(key, nil) do
      nil ->
        fun = &decode_step(&1, &2, &3, &4, &5, padded?, c)
        opts = [device: model.device, fuse: model.fuse]
        {out, bound} = EMLX.Defn.Bound.new(fun, args, 1, opts)
        :persistent_term.put(key, bound)
        out

      bound ->
        EMLX.Defn.Bound.run(bound, free)
    end
  end

  ## The model (traced by Nx.Defn, recorded by EMLX)

  @doc false
  def prefill_step(params, ids, caches, pads, padded?, c) do
    {b, l} = ids.shape
    x = embed(params.embed, ids, c)

    attention =
      if padded? do
        # Left padding: per-token positions, and each query sees the valid
        # keys up to itself (a padding query sees itself, to stay finite).
        positions = Nx.max(Nx.subtract(Nx.iota({b, l}, axis: 1), Nx.new_axis(pads, 1)), 0)
        q_idx = Nx.iota({1, l, 1})
        k_idx = Nx.iota({1, 1, l})
        valid_key = Nx.greater_equal(k_idx, Nx.reshape(pads, {b, 1, 1}))

        mask =
          Nx.logical_or(
            Nx.logical_and(Nx.less_equal(k_idx, q_idx), valid_key),
            Nx.equal(k_idx, q_idx)
          )

        {:padded, positions, Nx.new_axis(mask, 1)}
      else
        :causal
      end

    {_x, caches} =
      layers(params.layers, caches, x, fn x, layer, {kc, vc} ->
        {q, k, v} = qkv(x, layer, c)

        {q, k} =
          case attention do
            :causal ->
              {rope(transpose_heads(q), 0, c), rope(transpose_heads(k), 0, c)}

            {:padded, positions, _} ->
              {transpose_heads(rope_at(q, positions, c)),
               transpose_heads(rope_at(k, positions, c))}
          end

        v = transpose_heads(v)
        scale = :math.pow(c.head_dim, -0.5)

        out =
          case attention do
            :causal -> Fast.scaled_dot_product_attention_causal(q, k, v, scale)
            {:padded, _, mask} -> Fast.scaled_dot_product_attention(q, k, v, scale, mask)
          end

        kc = Nx.put_slice(kc, [0, 0, 0, 0], k)
        vc = Nx.put_slice(vc, [0, 0, 0, 0], v)
        {block_rest(x, out, layer, c), {kc, vc}}
      end)

    caches
  end

  @doc false
  def decode_step(params, input, caches, offset, pads, padded?, c) do
    {b, 1} = input.shape
    x = embed(params.embed, input, c)
    # every row at `offset` (mlx-lm's rope(x, offset)), or, left-padded,
    # each row at its own position (MLX's per-row offsets)
    positions = if padded?, do: Nx.subtract(offset, pads), else: offset
    {_, _, t_max, _} = elem(elem(caches, 0), 0).shape
    k_idx = Nx.iota({1, t_max})
    scale = :math.pow(c.head_dim, -0.5)

    valid =
      padded? &&
        k_idx
        |> Nx.less_equal(offset)
        |> Nx.logical_and(Nx.greater_equal(k_idx, Nx.new_axis(pads, 1)))
        |> Nx.reshape({b, 1, 1, t_max})

    {x, caches} =
      layers(params.layers, caches, x, fn x, layer, {kc, vc} ->
        {q, k, v} = qkv(x, layer, c)

        # RoPE of the transposed heads {B, N, 1, D}, as mlx-lm's: one fused kernel.
        q = rope(transpose_heads(q), positions, c)
        k = rope(transpose_heads(k), positions, c)

        kc = Nx.put_slice(kc, [0, 0, offset, 0], k)
        vc = Nx.put_slice(vc, [0, 0, offset, 0], transpose_heads(v))

        # Unpadded, the keys are the cache's first offset + 1 positions,
        # attended as mlx-lm does; left padding needs the key mask.
        out =
          if padded?,
            do: Fast.scaled_dot_product_attention(q, kc, vc, scale, valid),
            else: Fast.scaled_dot_product_attention_cached(q, kc, vc, scale, offset)

        {block_rest(x, out, layer, c), {kc, vc}}
      end)

    logits =
      x
      |> Fast.rms_norm(params.norm, c.eps)
      |> lm_head(params, c)
      |> Nx.squeeze(axes: [1])

    logprobs = Nx.subtract(logits, Fast.logsumexp(logits, axes: [-1], keep_axes: true))
    {Nx.argmax(logprobs, axis: -1, type: :s32), caches}
  end

  defp layers(layers, caches, x, fun) do
    {x, caches} =
      Enum.reduce(0..(tuple_size(layers) - 1), {x, []}, fn i, {x, acc} ->
        {x, cache} = fun.(x, elem(layers, i), elem(caches, i))
        {x, [cache | acc]}
      end)

    {x, caches |> Enum.reverse() |> List.to_tuple()}
  end

  # Projections and Qwen3's per-head norms, {B, L, heads, D} each.
  defp qkv(x, layer, c) do
    {b, l, _} = x.shape
    h = Fast.rms_norm(x, layer.input_norm, c.eps)
    q = h |> linear(layer.q) |> Nx.reshape({b, l, c.heads, c.head_dim})
    k = h |> linear(layer.k) |> Nx.reshape({b, l, c.kv_heads, c.head_dim})
    v = h |> linear(layer.v) |> Nx.reshape({b, l, c.kv_heads, c.head_dim})
    {Fast.rms_norm(q, layer.q_norm, c.eps), Fast.rms_norm(k, layer.k_norm, c.eps), v}
  end

  # The attention output {B, heads, L, D} through o_proj, the residual, and the MLP.
  defp block_rest(x, out, layer, c) do
    {b, l, _} = x.shape
    out = out |> Nx.transpose(axes: [0, 2, 1, 3]) |> Nx.reshape({b, l, c.heads * c.head_dim})
    h = Nx.add(x, linear(out, layer.o))
    m = Fast.rms_norm(h, layer.post_norm, c.eps)
    mlp = Fast.swiglu(linear(m, layer.gate), linear(m, layer.up)) |> linear(layer.down)
    Nx.add(h, mlp)
  end

  defp transpose_heads(t), do: Nx.transpose(t, axes: [0, 2, 1, 3])

  defp rope(t, offset, c), do: Fast.rope(t, c.head_dim, false, c.theta, 1.0, offset)

  defp rope_at(t, positions, c),
    do: Fast.rope_with_positions(t, positions, c.head_dim, false, c.theta, 1.0)

  defp linear(x, %{weight: w, scales: s, biases: b}), do: Packed.matmul(x, w, s, b)
  defp linear(x, %{weight: w}), do: Fast.linear(x, w)

  defp embed(%{weight: w, scales: s, biases: b}, ids, c) do
    bits = div(elem(w.shape, 1) * 32, c.hidden)
    group_size = div(c.hidden, elem(s.shape, 1))
    rows = &Nx.take(&1, ids, axis: 0)
    Packed.dequantize(rows.(w), rows.(s), rows.(b), bits: bits, group_size: group_size)
  end

  defp embed(%{weight: w}, ids, _c), do: Nx.take(w, ids, axis: 0)

  defp lm_head(x, %{lm_head: head}, _c), do: linear(x, head)
  defp lm_head(x, %{embed: embed}, _c), do: linear(x, embed)
end
