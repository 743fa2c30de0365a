defmodule EMLX.Fast.Block do
  @moduledoc """
  The `Nx.block/4` identity of an `EMLX.Fast` function: `op` is the op-table
  entry EMLX.Backend runs it as, `layout` its argument list, where
  `{:arg, i}` is the block's i-th tensor and `{:value, v}` a constant.
  """
  defstruct [:name, :op, layout: []]

  @doc "The op's arguments: the layout filled in with the block's tensors."
  def op_args(%__MODULE__{layout: layout}, tensors) do
    Enum.map(layout, fn
      {:arg, i} -> Enum.at(tensors, i)
      {:value, v} -> v
    end)
  end
end

defmodule EMLX.Fast do
  @moduledoc """
  MLX's fused transformer kernels (`mlx::core::fast`) for Nx.

  Each function is a plain-Nx computation (`EMLX.Fast.Reference`) wrapped
  in `Nx.block/4`: on `EMLX.Backend`, with f32, f16 or bf16 inputs, it runs
  as one MLX op (one instruction under `compiler: EMLX`); on any other
  backend, and for float64, the plain-Nx definition runs. Every function
  works eagerly and inside `defn`, and `Nx.Defn.grad/2` differentiates the
  plain-Nx definition.

      Axon.rewrite_nodes(model, fn
        %Axon.Node{op: :rms_norm, opts: [eps: eps]} ->
          fn [x, weight], _output -> EMLX.Fast.rms_norm(x, weight, eps) end
        _ -> :skip
      end)

  Bad shapes, types or options raise `ArgumentError`.

  Functions: `rms_norm/3`, `layer_norm/3` (no bias), `layer_norm/4`,
  `rope/6`, `rope_with_positions/6`, `rope_with_freqs/6`,
  `scaled_dot_product_attention/4` and `/5` (mask),
  `scaled_dot_product_attention_causal/4`,
  `scaled_dot_product_attention_causal_key_masked/5`, `swiglu/2`,
  `logsumexp/2` (MLX's kernel, not in `mlx::core::fast`), and the
  functional KV-cache step `kv_cache_attention/7` and
  `kv_cache_attention_masked/8`.

  Where this differs from the fused NIFs some EMLX versions had:
  `rope_with_positions/6` and `rope_with_freqs/6` are exact for any
  per-token positions (each token is its own row with its own offset, so
  left padding needs no separate path), and the key-masked attention always
  builds its boolean mask on the device (no host-side check of the mask).
  """

  import Nx.Defn, only: [deftransform: 2]

  alias EMLX.Fast.{Block, Reference}

  @doc """
  Fused RMS normalisation (`mlx::fast::rms_norm`) over the last axis of `x`,
  scaled by `weight` {hidden}. Output shape and type match `x`.
  """
  deftransform rms_norm(x, weight, eps) do
    name = "rms_norm/3"
    x = float!(x, name, "x")
    weight = float!(weight, name, "weight") |> vector!(x, name, "weight")
    eps = number!(eps, name, "eps")

    fast(name, :fast_rms_norm, [x, weight], [{:arg, 0}, {:arg, 1}, {:value, eps}], x, fn x, w ->
      Reference.rms_norm(x, w, eps)
    end)
  end

  @doc """
  Fused layer normalisation without bias (`mlx::fast::layer_norm`) over the
  last axis of `x`, scaled by `weight` {hidden}.
  """
  deftransform layer_norm(x, weight, eps) do
    name = "layer_norm/3"
    x = float!(x, name, "x")
    weight = float!(weight, name, "weight") |> vector!(x, name, "weight")
    eps = number!(eps, name, "eps")
    layout = [{:arg, 0}, {:arg, 1}, {:value, eps}]

    fast(name, :fast_layer_norm_no_bias, [x, weight], layout, x, fn x, w ->
      Reference.layer_norm(x, w, nil, eps)
    end)
  end

  @doc """
  Fused layer normalisation (`mlx::fast::layer_norm`) over the last axis of
  `x`, scaled by `weight` {hidden} and shifted by `bias` {hidden}.
  """
  deftransform layer_norm(x, weight, bias, eps) do
    name = "layer_norm/4"
    x = float!(x, name, "x")
    weight = float!(weight, name, "weight") |> vector!(x, name, "weight")
    bias = float!(bias, name, "bias") |> vector!(x, name, "bias")
    eps = number!(eps, name, "eps")
    layout = [{:arg, 0}, {:arg, 1}, {:arg, 2}, {:value, eps}]

    fast(name, :fast_layer_norm, [x, weight, bias], layout, x, fn x, w, b ->
      Reference.layer_norm(x, w, b, eps)
    end)
  end

  @doc """
  Fused rotary position embedding (`mlx::fast::rope`) of `a` {B, ..., T, D}
  at positions `offset + t` along axis -2.

  `dims` (even, at most D) features are rotated, the rest pass through;
  `traditional` rotates interleaved pairs (false: split halves, as Qwen3);
  `base` is the angular frequency base, `scale` multiplies positions and
  `offset` (tokens already in the KV cache) is an integer, an integer
  scalar tensor, or an integer vector {B} with one offset per row of `a`'s
  first axis (left-padded batches). As a tensor, a decode step keeps one
  compiled plan for every position, and runs the same fused kernel as
  mlx-lm's `rope(x, offset)`.
  """
  deftransform rope(a, dims, traditional, base, scale, offset) do
    name = "rope/6"
    {a, scale} = rope_args!(a, dims, traditional, scale, 2, name)
    base = positive!(base, name, "base")
    layout = [{:arg, 0}, {:value, dims}, {:value, traditional}, {:value, base}, {:value, scale}]
    rows = {elem(a.shape, 0)}

    case offset do
      %Nx.Tensor{shape: shape, type: {kind, _}}
      when kind in [:s, :u] and (shape == {} or shape == rows) ->
        fast(name, :fast_rope_offset, [a, offset], layout ++ [{:arg, 1}], a, fn a, o ->
          Reference.rope(a, dims, traditional, base, scale, o)
        end)

      i when is_integer(i) and i >= -2_147_483_648 and i <= 2_147_483_647 ->
        fast(name, :fast_rope, [a], layout ++ [{:value, i}], a, fn a ->
          Reference.rope(a, dims, traditional, base, scale, i)
        end)

      other ->
        raise ArgumentError,
              "EMLX.Fast.#{name}: offset must be a 32-bit integer, an integer scalar tensor " <>
                "or an integer vector of #{elem(rows, 0)} (the first axis), got: #{inspect(other)}"
    end
  end

  @doc """
  Fused RoPE of `a` {B, T, ..., D} (heads not yet transposed) at per-token
  positions `position_ids` {B, T} (integers, any positions: left padding
  and non-sequential positions are exact). See `rope/6` for the options.
  """
  deftransform rope_with_positions(a, position_ids, dims, traditional, base, scale) do
    name = "rope_with_positions/6"
    {a, scale} = rope_args!(a, dims, traditional, scale, 3, name)
    position_ids = positions!(position_ids, a, name)
    base = positive!(base, name, "base")

    layout = [
      {:arg, 0},
      {:arg, 1},
      {:value, dims},
      {:value, traditional},
      {:value, base},
      {:value, scale}
    ]

    fast(name, :fast_rope_positions, [a, position_ids], layout, a, fn a, pos ->
      inv = Reference.inv_freqs(dims, base, {:f, 64})
      Reference.rope_positions(a, pos, dims, traditional, scale, inv)
    end)
  end

  @doc """
  Fused RoPE of `a` {B, T, ..., D} at per-token `position_ids` {B, T} with
  precomputed inverse frequencies `freqs` {dims / 2} (e.g. :llama3 scaling).
  See `rope/6` for the options.
  """
  deftransform rope_with_freqs(a, position_ids, dims, traditional, scale, freqs) do
    name = "rope_with_freqs/6"
    {a, scale} = rope_args!(a, dims, traditional, scale, 3, name)
    position_ids = positions!(position_ids, a, name)
    freqs = float!(freqs, name, "freqs")

    if freqs.shape != {div(dims, 2)} do
      raise ArgumentError,
            "EMLX.Fast.#{name}: freqs must have shape {#{div(dims, 2)}} (dims / 2), got: #{inspect(freqs.shape)}"
    end

    layout = [
      {:arg, 0},
      {:arg, 1},
      {:value, dims},
      {:value, traditional},
      {:value, scale},
      {:arg, 2}
    ]

    fast(name, :fast_rope_freqs, [a, position_ids, freqs], layout, a, fn a, pos, f ->
      Reference.rope_positions(a, pos, dims, traditional, scale, f)
    end)
  end

  @doc """
  Flash-attention SDPA without a mask
  (`mlx::fast::scaled_dot_product_attention`): q {B, Nq, Tq, D} over k and v
  {B, Nkv, Tkv, D}, with Nq a multiple of Nkv (grouped-query attention).
  Output {B, Nq, Tq, D}, of q's type.
  """
  deftransform scaled_dot_product_attention(q, k, v, scale) do
    name = "scaled_dot_product_attention/4"
    {q, k, v, scale} = qkv!(q, k, v, scale, name)
    layout = [{:arg, 0}, {:arg, 1}, {:arg, 2}, {:value, scale}]

    fast(name, :fast_sdpa, [q, k, v], layout, q, fn q, k, v ->
      Reference.sdpa(q, k, v, scale, nil)
    end)
  end

  @doc """
  SDPA with a mask broadcastable to {B, Nq, Tq, Tkv}: an integer mask
  attends where nonzero, a float mask is added to the scaled scores.
  """
  deftransform scaled_dot_product_attention(q, k, v, scale, mask) do
    name = "scaled_dot_product_attention/5"
    {q, k, v, scale} = qkv!(q, k, v, scale, name)
    mask = tensor!(mask, name, "mask")
    {b, nq, tq, _} = q.shape
    full = {b, nq, tq, elem(k.shape, 2)}

    unless broadcastable?(mask.shape, full) do
      raise ArgumentError,
            "EMLX.Fast.#{name}: mask of shape #{inspect(mask.shape)} does not broadcast to #{inspect(full)}"
    end

    mask =
      case mask.type do
        {:c, _} ->
          raise ArgumentError, "EMLX.Fast.#{name}: mask must be an integer or float tensor"

        {kind, _} when kind in [:f, :bf] ->
          Nx.as_type(mask, q.type)

        _ ->
          mask
      end

    kind = if Nx.Type.float?(mask.type), do: :add, else: :keep
    layout = [{:arg, 0}, {:arg, 1}, {:arg, 2}, {:arg, 3}, {:value, scale}]

    fast(name, :fast_sdpa_masked, [q, k, v, mask], layout, q, fn q, k, v, m ->
      Reference.sdpa(q, k, v, scale, {kind, m})
    end)
  end

  @doc """
  SDPA with the causal mask built in (aligned bottom-right: query i of Tq
  sees keys up to i + Tkv - Tq). Layout as `scaled_dot_product_attention/4`.
  """
  deftransform scaled_dot_product_attention_causal(q, k, v, scale) do
    name = "scaled_dot_product_attention_causal/4"
    {q, k, v, scale} = qkv!(q, k, v, scale, name)
    layout = [{:arg, 0}, {:arg, 1}, {:arg, 2}, {:value, scale}]

    fast(name, :fast_sdpa_causal, [q, k, v], layout, q, fn q, k, v ->
      Reference.sdpa(q, k, v, scale, :causal)
    end)
  end

  @doc """
  Causal SDPA over the keys where `key_mask` {B, Tkv} is nonzero (1 =
  attend, 0 = padding). Layout as `scaled_dot_product_attention_causal/4`.
  A query that sees no key gives NaN.
  """
  deftransform scaled_dot_product_attention_causal_key_masked(q, k, v, scale, key_mask) do
    name = "scaled_dot_product_attention_causal_key_masked/5"
    {q, k, v, scale} = qkv!(q, k, v, scale, name)
    key_mask = tensor!(key_mask, name, "key_mask")
    want = {elem(q.shape, 0), elem(k.shape, 2)}

    if key_mask.shape != want or match?({:c, _}, key_mask.type) do
      raise ArgumentError,
            "EMLX.Fast.#{name}: key_mask must be a real tensor of shape #{inspect(want)}, " <>
              "got #{inspect(key_mask.type)} #{inspect(key_mask.shape)}"
    end

    layout = [{:arg, 0}, {:arg, 1}, {:arg, 2}, {:value, scale}, {:arg, 3}]

    fast(name, :fast_sdpa_causal_key_masked, [q, k, v, key_mask], layout, q, fn q, k, v, m ->
      Reference.sdpa_causal_key_masked(q, k, v, scale, m)
    end)
  end

  @doc """
  Attention over the filled prefix of a KV cache, as mlx-lm's decode step
  runs it: `k_cache` and `v_cache` {B, N_kv, T_max, D} hold `offset + T_q`
  valid positions, and q {B, N_q, T_q, D} holds the queries at positions
  `offset` to `offset + T_q - 1`; query i sees keys 0 to `offset + i`.
  `offset` is an integer or an integer scalar tensor.

  On EMLX the prefix is sliced to its length and attended by MLX's fused
  SDPA with no mask (one query) or its causal mask (several): the kernels
  and key count of mlx-lm's step, not a masked pass over all T_max
  positions. The length is data: EMLX reads `offset` when it builds the
  graph, so under `compiler: EMLX` the program is replayed without
  `mx::compile` (see `EMLX`'s `:fuse` option). An offset past the cache
  raises. The reference masks the keys past each query's position.
  """
  deftransform scaled_dot_product_attention_cached(q, k_cache, v_cache, scale, offset) do
    name = "scaled_dot_product_attention_cached/5"
    {q, k, v, scale} = qkv!(q, k_cache, v_cache, scale, name)
    offset = offset!(offset, name)
    layout = [{:arg, 0}, {:arg, 1}, {:arg, 2}, {:value, scale}, {:arg, 3}]

    fast(name, :fast_sdpa_cached, [q, k, v, offset], layout, q, fn q, k, v, o ->
      Reference.sdpa_cached(q, k, v, scale, o)
    end)
  end

  @doc """
  Fused SwiGLU: `silu(gate) * up`. `up` has `gate`'s shape; the output has
  `gate`'s shape and type.
  """
  deftransform swiglu(gate, up) do
    name = "swiglu/2"
    gate = float!(gate, name, "gate")
    up = float!(up, name, "up")

    if gate.shape != up.shape do
      raise ArgumentError,
            "EMLX.Fast.#{name}: gate and up must have the same shape, got #{inspect(gate.shape)} and #{inspect(up.shape)}"
    end

    up = Nx.as_type(up, gate.type)
    fast(name, :fast_swiglu, [gate, up], [{:arg, 0}, {:arg, 1}], gate, &Reference.swiglu/2)
  end

  @doc """
  A linear layer without bias, `x @ transpose(weight)`, with MLX's own
  matmul in `x`'s type (as mlx-lm's `nn.Linear`): `x` is {..., in},
  `weight` {out, in}; the output is {..., out} of `x`'s type. `Nx.dot/4` on
  EMLX computes f16/bf16 products on the CPU as an f32 GEMM rounded once
  (faster and more accurate); this keeps MLX's half-precision kernel, so
  results equal MLX's (and mlx-lm's) bit for bit. The reference is
  `Nx.dot(x, [-1], weight, [1])`.
  """
  deftransform linear(x, weight) do
    name = "linear/2"
    x = float!(x, name, "x")
    weight = float!(weight, name, "weight")
    rank = tuple_size(x.shape)

    if rank < 1 or tuple_size(weight.shape) != 2 or
         elem(x.shape, rank - 1) != elem(weight.shape, 1) do
      raise ArgumentError,
            "EMLX.Fast.#{name}: x must be {..., in} and weight {out, in}, got #{inspect(x.shape)} and #{inspect(weight.shape)}"
    end

    weight = Nx.as_type(weight, x.type)
    out = Nx.template(put_elem(x.shape, rank - 1, elem(weight.shape, 0)), x.type)
    fast(name, :fast_linear, [x, weight], [{:arg, 0}, {:arg, 1}], out, &Reference.linear/2)
  end

  @doc """
  `log(sum(exp(x)))` over `axes` (default: all) with MLX's own kernel
  (`mx::logsumexp`, which accumulates in f32 and keeps `x`'s type), as
  mlx-lm computes log-probabilities. Options: `:axes`, `:keep_axes`
  (default `false`). The reference is `Nx.logsumexp/2` computed in f32.
  """
  deftransform logsumexp(x, opts \\ []) do
    name = "logsumexp/2"
    opts = Keyword.validate!(opts, [:axes, keep_axes: false])
    x = float!(x, name, "x")
    rank = tuple_size(x.shape)
    axes = if opts[:axes], do: Enum.map(opts[:axes], &Nx.axis_index(x, &1)), else: Nx.axes(x)
    keep = opts[:keep_axes]

    shape =
      x.shape
      |> Tuple.to_list()
      |> Enum.with_index()
      |> Enum.flat_map(fn {d, i} -> if i in axes, do: if(keep, do: [1], else: []), else: [d] end)
      |> List.to_tuple()

    if x.vectorized_axes != [] or rank == 0 do
      reference_logsumexp(x, axes, keep)
    else
      struct = %Block{
        name: name,
        op: :logsumexp,
        layout: [{:arg, 0}, {:value, axes}, {:value, keep}]
      }

      Nx.block(struct, [x], Nx.template(shape, x.type), fn _, x ->
        reference_logsumexp(x, axes, keep)
      end)
    end
  end

  defp reference_logsumexp(x, axes, keep) do
    x
    |> Nx.as_type(Nx.Type.merge(x.type, {:f, 32}))
    |> Nx.logsumexp(axes: axes, keep_axes: keep)
    |> Nx.as_type(x.type)
  end

  @doc """
  KV-cache update and attention in one op, functional: returns
  `{attention, k_cache, v_cache}` with the caches updated.

  Layout {B, T, N, D} (Bumblebee's): `q` {B, T, N_q, D} and `new_k`,
  `new_v` {B, T, N_kv, D} (post-RoPE) for positions `offset + t`;
  `k_cache`, `v_cache` {B, T_max, N_kv, D}. `new_k` and `new_v` are written
  at `offset` (an integer or an integer scalar tensor, so a decode loop
  need not recompile; clamped to fit, as `Nx.put_slice/3`), and each query
  attends the cache positions up to its own. All five tensors share one
  float type. Output `attention` {B, T, N_q, D}.
  """
  deftransform kv_cache_attention(q, new_k, new_v, k_cache, v_cache, offset, scale) do
    kv_cache("kv_cache_attention/7", [q, new_k, new_v, k_cache, v_cache], offset, scale, nil)
  end

  @doc """
  As `kv_cache_attention/7`, attending only the cache positions where
  `key_mask` {B, T_max} is nonzero (1 = attend, 0 = padding).
  """
  deftransform kv_cache_attention_masked(
                 q,
                 new_k,
                 new_v,
                 k_cache,
                 v_cache,
                 offset,
                 scale,
                 key_mask
               ) do
    name = "kv_cache_attention_masked/8"
    kv_cache(name, [q, new_k, new_v, k_cache, v_cache], offset, scale, key_mask)
  end

  # What every RoPE variant checks: a float `a` of at least `rank`
  # dimensions, `dims`, the `traditional` flag and a numeric `scale`.
  defp rope_args!(a, dims, traditional, scale, rank, name) do
    a = float!(a, name, "a")
    rank!(a, rank, name, "a")
    dims!(dims, a, name)
    bool!(traditional, name, "traditional")
    {a, number!(scale, name, "scale")}
  end

  defp kv_cache(name, tensors, offset, scale, key_mask) do
    [q, nk, nv, kc, vc] =
      Enum.zip_with(tensors, ~w(q new_k new_v k_cache v_cache), &float!(&1, name, &2))

    unless Enum.all?([q, nk, nv, kc, vc], &(tuple_size(&1.shape) == 4)) and nk.shape == nv.shape and
             kc.shape == vc.shape and Enum.all?([q, nk, nv, vc], &(&1.type == kc.type)) do
      raise ArgumentError,
            "EMLX.Fast.#{name}: q, new_k, new_v, k_cache and v_cache must be {B, T, N, D} tensors of one " <>
              "type (new_k as new_v, k_cache as v_cache)"
    end

    {b, t, nq, d} = q.shape
    {cb, tmax, nkv, cd} = kc.shape

    unless nk.shape == {b, t, nkv, d} and cb == b and cd == d and t <= tmax and nkv > 0 and
             rem(nq, nkv) == 0 do
      raise ArgumentError,
            "EMLX.Fast.#{name}: q #{inspect(q.shape)}, new_k #{inspect(nk.shape)} and the cache " <>
              "#{inspect(kc.shape)} do not agree (N_q a multiple of N_kv, T at most T_max)"
    end

    offset = offset!(offset, name)
    scale = number!(scale, name, "scale")
    layout = Enum.map(0..5, &{:arg, &1}) ++ [{:value, scale}]

    out =
      {Nx.template(q.shape, q.type), Nx.template(kc.shape, kc.type),
       Nx.template(vc.shape, vc.type)}

    key_mask = key_mask && key_mask!(key_mask, {b, tmax}, name)
    tensors = [q, nk, nv, kc, vc, offset] ++ if(key_mask, do: [key_mask], else: [])
    reference = &Reference.kv_cache_attention(&1, &2, &3, &4, &5, &6, scale, &7)

    cond do
      Enum.any?(tensors, &(&1.vectorized_axes != [])) ->
        apply(reference, tensors ++ if(key_mask, do: [], else: [nil]))

      key_mask ->
        struct = %Block{
          name: name,
          op: :fast_kv_cache_attention_masked,
          layout: layout ++ [{:arg, 6}]
        }

        Nx.block(struct, tensors, out, fn _, q, nk, nv, kc, vc, o, m ->
          reference.(q, nk, nv, kc, vc, o, m)
        end)

      true ->
        struct = %Block{name: name, op: :fast_kv_cache_attention, layout: layout}

        Nx.block(struct, tensors, out, fn _, q, nk, nv, kc, vc, o ->
          reference.(q, nk, nv, kc, vc, o, nil)
        end)
    end
  end

  defp key_mask!(key_mask, want, name) do
    key_mask = tensor!(key_mask, name, "key_mask")

    if key_mask.shape != want or match?({:c, _}, key_mask.type) do
      raise ArgumentError,
            "EMLX.Fast.#{name}: key_mask must be a real tensor of shape #{inspect(want)}, " <>
              "got #{inspect(key_mask.type)} #{inspect(key_mask.shape)}"
    end

    key_mask
  end

  ## The block

  # One Nx.block: EMLX.Backend runs `op` (see EMLX.Backend.block/4), every
  # other backend the reference. Vectorized inputs take the reference.
  defp fast(name, op, tensors, layout, %Nx.Tensor{} = like, reference) do
    if Enum.any?(tensors, &(&1.vectorized_axes != [])) do
      apply(reference, tensors)
    else
      struct = %Block{name: name, op: op, layout: layout}
      out = Nx.template(like.shape, like.type)
      Nx.block(struct, tensors, out, with_struct(reference, length(tensors)))
    end
  end

  # Nx.block's default fun takes the struct first, then each tensor.
  defp with_struct(f, 1), do: fn _, a -> f.(a) end
  defp with_struct(f, 2), do: fn _, a, b -> f.(a, b) end
  defp with_struct(f, 3), do: fn _, a, b, c -> f.(a, b, c) end
  defp with_struct(f, 4), do: fn _, a, b, c, d -> f.(a, b, c, d) end

  ## Checks

  defp tensor!(%Nx.Tensor{} = t, _name, _what), do: t
  defp tensor!(n, _name, _what) when is_number(n), do: Nx.tensor(n)

  defp tensor!(other, name, what),
    do:
      raise(ArgumentError, "EMLX.Fast.#{name}: #{what} must be a tensor, got: #{inspect(other)}")

  defp float!(t, name, what) do
    t = tensor!(t, name, what)

    case t.type do
      # f8 is no MLX type (see EMLX.Types): MLX's kernels cannot take it
      {kind, size} when kind in [:f, :bf] and size >= 16 ->
        t

      type ->
        raise ArgumentError,
              "EMLX.Fast.#{name}: #{what} must be a float tensor (f16, bf16, f32 or f64), got: #{inspect(type)}"
    end
  end

  defp vector!(w, x, name, what) do
    hidden = if x.shape == {}, do: nil, else: elem(x.shape, tuple_size(x.shape) - 1)

    if hidden == nil or w.shape != {hidden} do
      raise ArgumentError,
            "EMLX.Fast.#{name}: #{what} must have shape {hidden} with hidden the last axis of x " <>
              "#{inspect(x.shape)}, got: #{inspect(w.shape)}"
    end

    Nx.as_type(w, x.type)
  end

  defp rank!(t, min, name, what) do
    if tuple_size(t.shape) < min do
      raise ArgumentError,
            "EMLX.Fast.#{name}: #{what} must have at least #{min} axes, got shape #{inspect(t.shape)}"
    end
  end

  defp dims!(dims, a, name) do
    d = elem(a.shape, tuple_size(a.shape) - 1)

    unless is_integer(dims) and dims > 0 and rem(dims, 2) == 0 and dims <= d do
      raise ArgumentError,
            "EMLX.Fast.#{name}: dims must be a positive even integer at most #{d} (the last axis), got: #{inspect(dims)}"
    end
  end

  defp positions!(pos, a, name) do
    pos = tensor!(pos, name, "position_ids")
    want = {elem(a.shape, 0), elem(a.shape, 1)}

    unless pos.shape == want and match?({kind, _} when kind in [:s, :u], pos.type) do
      raise ArgumentError,
            "EMLX.Fast.#{name}: position_ids must be an integer tensor of shape #{inspect(want)}, " <>
              "got #{inspect(pos.type)} #{inspect(pos.shape)}"
    end

    pos
  end

  defp bool!(b, _name, _what) when is_boolean(b), do: b

  defp bool!(b, name, what),
    do: raise(ArgumentError, "EMLX.Fast.#{name}: #{what} must be a boolean, got: #{inspect(b)}")

  defp number!(n, _name, _what) when is_number(n), do: n * 1.0

  defp number!(n, name, what),
    do: raise(ArgumentError, "EMLX.Fast.#{name}: #{what} must be a number, got: #{inspect(n)}")

  defp positive!(n, name, what) do
    n = number!(n, name, what)
    if n > 0, do: n, else: raise(ArgumentError, "EMLX.Fast.#{name}: #{what} must be positive")
  end

  # Each axis of `shape`, from the right, is 1 or the target's.
  defp broadcastable?(shape, {_, _, _, _} = full) when tuple_size(shape) <= 4 do
    shape
    |> Tuple.to_list()
    |> Enum.reverse()
    |> Enum.zip(full |> Tuple.to_list() |> Enum.reverse())
    |> Enum.all?(fn {d, want} -> d == 1 or d == want end)
  end

  defp broadcastable?(_shape, _full), do: false

  defp offset!(i, _name) when is_integer(i) and i >= 0 and i < 2_147_483_648,
    do: Nx.tensor(i, type: {:s, 32})

  defp offset!(%Nx.Tensor{shape: {}, type: {kind, _}} = o, _name) when kind in [:s, :u], do: o

  defp offset!(other, name) do
    raise ArgumentError,
          "EMLX.Fast.#{name}: offset must be a non-negative integer or an integer scalar tensor, " <>
            "got: #{inspect(other)}"
  end

  defp qkv!(q, k, v, scale, name) do
    [q, k, v] = for {t, w} <- [{q, "q"}, {k, "k"}, {v, "v"}], do: float!(t, name, w)

    unless tuple_size(q.shape) == 4 and tuple_size(k.shape) == 4 and k.shape == v.shape do
      raise ArgumentError,
            "EMLX.Fast.#{name}: q must be {B, N_q, T_q, D} and k, v {B, N_kv, T_kv, D} (the same shape), " <>
              "got #{inspect(q.shape)}, #{inspect(k.shape)}, #{inspect(v.shape)}"
    end

    {b, nq, _, d} = q.shape
    {kb, nkv, tk, kd} = k.shape

    unless b == kb and d == kd and nkv > 0 and rem(nq, nkv) == 0 and tk > 0 and d > 0 do
      raise ArgumentError,
            "EMLX.Fast.#{name}: q #{inspect(q.shape)} and k #{inspect(k.shape)} must agree on batch and " <>
              "head size, have keys, and N_q must be a multiple of N_kv"
    end

    {q, Nx.as_type(k, q.type), Nx.as_type(v, q.type), number!(scale, name, "scale")}
  end
end
