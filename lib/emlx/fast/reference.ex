defmodule EMLX.Fast.Reference do
  @moduledoc """
  The plain-Nx definitions behind `EMLX.Fast`: what each fused kernel
  computes, on any backend and inside `defn`. `EMLX.Fast` runs these where
  EMLX.Backend has no fused kernel for the input (float64, other backends),
  and `Nx.Defn.grad/2` differentiates them.

  Half-precision inputs are computed in f32 and the result cast back, as
  MLX's kernels accumulate in f32.
  """

  @doc "RMS normalisation over the last axis, scaled by `weight`."
  def rms_norm(x, weight, eps) do
    {xf, type} = up(x)
    ms = Nx.mean(Nx.multiply(xf, xf), axes: [-1], keep_axes: true)

    xf
    |> Nx.multiply(Nx.rsqrt(Nx.add(ms, eps)))
    |> Nx.multiply(Nx.as_type(weight, xf.type))
    |> Nx.as_type(type)
  end

  @doc "Layer normalisation over the last axis (`bias` may be nil)."
  def layer_norm(x, weight, bias, eps) do
    {xf, type} = up(x)
    mean = Nx.mean(xf, axes: [-1], keep_axes: true)
    centered = Nx.subtract(xf, mean)
    var = Nx.mean(Nx.multiply(centered, centered), axes: [-1], keep_axes: true)

    y =
      centered
      |> Nx.multiply(Nx.rsqrt(Nx.add(var, eps)))
      |> Nx.multiply(Nx.as_type(weight, xf.type))

    y = if bias, do: Nx.add(y, Nx.as_type(bias, xf.type)), else: y
    Nx.as_type(y, type)
  end

  @doc "The inverse frequencies of RoPE: `base ** (-2i / dims)` for i < dims / 2."
  def inv_freqs(dims, base, type) do
    half = div(dims, 2)
    Nx.exp(Nx.multiply(Nx.iota({half}, type: type), -:math.log(base) / half))
  end

  @doc """
  RoPE of `x` {..., T, D} at positions `offset + t` along axis -2, times
  `scale`; an offset vector {B} gives each row of x's first axis its own.
  """
  def rope(x, dims, traditional, base, scale, offset) do
    {xf, type} = up(x)
    rank = tuple_size(x.shape)
    t = elem(x.shape, rank - 2)

    offset =
      case offset do
        %Nx.Tensor{shape: {b}} ->
          Nx.reshape(offset, List.to_tuple([b | List.duplicate(1, rank - 1)]))

        other ->
          other
      end

    pos = Nx.multiply(Nx.add(Nx.iota({t, 1}, type: xf.type), offset), scale)
    angles = Nx.multiply(pos, Nx.reshape(inv_freqs(dims, base, xf.type), {1, div(dims, 2)}))
    xf |> rotate(angles, dims, traditional) |> Nx.as_type(type)
  end

  @doc """
  RoPE of `x` {B, T, ..., D} at per-token positions `position_ids` {B, T}
  (times `scale`), with inverse frequencies `inv_freqs` {dims / 2}.
  """
  def rope_positions(x, position_ids, dims, traditional, scale, inv_freqs) do
    {xf, type} = up(x)
    rank = tuple_size(x.shape)
    {b, t} = position_ids.shape
    pos_shape = List.to_tuple([b, t | List.duplicate(1, rank - 2)])
    freq_shape = List.to_tuple(List.duplicate(1, rank - 1) ++ [div(dims, 2)])
    pos = position_ids |> Nx.as_type(xf.type) |> Nx.multiply(scale) |> Nx.reshape(pos_shape)
    angles = Nx.multiply(pos, Nx.reshape(Nx.as_type(inv_freqs, xf.type), freq_shape))
    xf |> rotate(angles, dims, traditional) |> Nx.as_type(type)
  end

  # Rotates the first `dims` features of x by `angles` (broadcastable to
  # x's shape with dims / 2 last): split halves, or interleaved pairs.
  defp rotate(x, angles, dims, traditional) do
    half = div(dims, 2)
    axis = tuple_size(x.shape) - 1
    d = elem(x.shape, axis)
    {cos, sin} = {Nx.cos(angles), Nx.sin(angles)}

    {x1, x2} =
      if traditional do
        {Nx.slice_along_axis(x, 0, dims - 1, axis: axis, strides: 2),
         Nx.slice_along_axis(x, 1, dims - 1, axis: axis, strides: 2)}
      else
        {Nx.slice_along_axis(x, 0, half, axis: axis),
         Nx.slice_along_axis(x, half, half, axis: axis)}
      end

    o1 = Nx.subtract(Nx.multiply(x1, cos), Nx.multiply(x2, sin))
    o2 = Nx.add(Nx.multiply(x1, sin), Nx.multiply(x2, cos))

    rotated =
      if traditional do
        shape = o1.shape |> Tuple.delete_at(axis) |> Tuple.insert_at(axis, dims)
        Nx.stack([o1, o2], axis: axis + 1) |> Nx.reshape(shape)
      else
        Nx.concatenate([o1, o2], axis: axis)
      end

    if dims < d,
      do:
        Nx.concatenate([rotated, Nx.slice_along_axis(x, dims, d - dims, axis: axis)], axis: axis),
      else: rotated
  end

  @doc """
  Attention of q {B, Nq, Tq, D} over k, v {B, Nkv, Tkv, D} (Nq a multiple
  of Nkv). `mask`: nil, `:causal` (bottom-right aligned), `{:keep, m}`
  (attend where m, broadcast to {B, Nq, Tq, Tkv}, is nonzero) or
  `{:add, m}` (added to the scaled scores).
  """
  def sdpa(q, k, v, scale, mask) do
    {qf, type} = up(q)
    {b, nq, tq, d} = q.shape
    {_, nkv, tk, _} = k.shape
    g = div(nq, nkv)
    kf = Nx.as_type(k, qf.type)
    vf = Nx.as_type(v, qf.type)
    q5 = Nx.reshape(qf, {b, nkv, g, tq, d})
    scores = Nx.dot(q5, [4], [0, 1], kf, [3], [0, 1]) |> Nx.multiply(scale)
    full = {b, nkv, g, tq, tk}

    scores =
      case mask do
        nil ->
          scores

        :causal ->
          keep = causal(tq, tk) |> Nx.reshape({1, 1, 1, tq, tk})
          Nx.select(Nx.broadcast(keep, full), scores, Nx.Constants.neg_infinity(qf.type))

        {:keep, m} ->
          keep = m |> Nx.not_equal(0) |> Nx.broadcast({b, nq, tq, tk}) |> Nx.reshape(full)
          Nx.select(keep, scores, Nx.Constants.neg_infinity(qf.type))

        {:add, m} ->
          m = m |> Nx.as_type(qf.type) |> Nx.broadcast({b, nq, tq, tk}) |> Nx.reshape(full)
          Nx.add(scores, m)
      end

    max = Nx.reduce_max(scores, axes: [4], keep_axes: true)
    e = Nx.exp(Nx.subtract(scores, max))
    p = Nx.divide(e, Nx.sum(e, axes: [4], keep_axes: true))

    Nx.dot(p, [4], [0, 1], vf, [2], [0, 1])
    |> Nx.reshape({b, nq, tq, d})
    |> Nx.as_type(type)
  end

  @doc "The causal mask {Tq, Tkv} (1 = attend), aligned bottom-right as MLX's."
  def causal(tq, tk) do
    off = max(tk - tq, 0)
    Nx.greater_equal(Nx.add(Nx.iota({tq, 1}), off), Nx.iota({1, tk}))
  end

  @doc "Causal attention over the keys where `key_mask` {B, Tkv} is nonzero."
  def sdpa_causal_key_masked(q, k, v, scale, key_mask) do
    {b, _, tq, _} = q.shape
    tk = elem(k.shape, 2)
    keys = key_mask |> Nx.not_equal(0) |> Nx.reshape({b, 1, 1, tk})
    keep = Nx.logical_and(Nx.reshape(causal(tq, tk), {1, 1, tq, tk}), keys)
    sdpa(q, k, v, scale, {:keep, keep})
  end

  @doc """
  KV cache update and attention in {B, T, N, D}: `new_k`, `new_v` written
  into the caches at `offset` (as `Nx.put_slice/3`), then `q` at positions
  `offset + t` attends the cache up to its own position (and where
  `key_mask` {B, Tmax}, unless nil, is nonzero). Returns
  `{attention, k_cache, v_cache}`.
  """
  def kv_cache_attention(q, new_k, new_v, k_cache, v_cache, offset, scale, key_mask) do
    k = Nx.put_slice(k_cache, [0, offset, 0, 0], new_k)
    v = Nx.put_slice(v_cache, [0, offset, 0, 0], new_v)
    {b, t, _, _} = q.shape
    tmax = elem(k_cache.shape, 1)
    keep = keep_up_to(t, tmax, offset)

    keep =
      if key_mask,
        do: Nx.logical_and(keep, key_mask |> Nx.not_equal(0) |> Nx.reshape({b, 1, 1, tmax})),
        else: keep

    bntd = [axes: [0, 2, 1, 3]]
    t_ = &Nx.transpose(&1, bntd)
    attn = sdpa(t_.(q), t_.(k), t_.(v), scale, {:keep, keep})
    {t_.(attn), k, v}
  end

  @doc "Attention over the first offset + T_q keys, query i at position offset + i."
  def sdpa_cached(q, k, v, scale, offset) do
    keep = keep_up_to(elem(q.shape, 2), elem(k.shape, 2), offset)
    sdpa(q, k, v, scale, {:keep, keep})
  end

  # {1, 1, t, tmax}: query i (at position offset + i) keeps keys 0..offset + i.
  defp keep_up_to(t, tmax, offset) do
    qpos = Nx.add(Nx.iota({t, 1}, type: {:s, 32}), Nx.as_type(offset, {:s, 32}))
    Nx.less_equal(Nx.iota({1, tmax}, type: {:s, 32}), qpos) |> Nx.reshape({1, 1, t, tmax})
  end

  @doc "A linear layer without bias: x @ transpose(weight)."
  def linear(x, weight), do: Nx.dot(x, [-1], weight, [1])

  @doc "SwiGLU: silu(gate) * up."
  def swiglu(gate, up) do
    {g, type} = up(gate)
    g |> Nx.multiply(Nx.sigmoid(g)) |> Nx.multiply(Nx.as_type(up, g.type)) |> Nx.as_type(type)
  end

  defp up(%Nx.Tensor{type: {kind, 16} = type} = x) when kind in [:f, :bf],
    do: {Nx.as_type(x, {:f, 32}), type}

  defp up(%Nx.Tensor{type: type} = x), do: {x, type}
end
