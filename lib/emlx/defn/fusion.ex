defmodule EMLX.Defn.Fusion do
  @moduledoc false
  # Rewrites of a recorded program into MLX's fused kernels, made once when
  # its plan is built (EMLX.Defn.Recorder.program/2, on the instructions as
  # recorded: operands are {:in, i} and {:out, j}). Each rewrite replaces a
  # pattern's last instruction by one fused op, so every slot keeps its
  # number; the pattern's other instructions stay in the program, and MLX,
  # which computes only what the outputs depend on, never runs them. A
  # pattern is fused only when nothing else (no other instruction, no
  # output: a gradient, say) uses its intermediate results, which would
  # then be computed anyway. Each pattern starts from the max over the axes
  # (keep_axes) that Nx code subtracts first, as the fused kernels do, so
  # they give the same values up to rounding.
  #
  # - softmax: reduce_max, subtract, exp, sum and divide over the same axes
  #   (Axon's softmax activation, attention) -> MLX's softmax kernel, one
  #   pass over the data where the composed form makes five;
  # - log_softmax: the same shifted input minus the log of the sum, as
  #   `s - log(z)` or Axon's `-log(z) + s` -> x - logsumexp(x);
  # - logsumexp: Nx.logsumexp's form (a max that is infinite counts as 0,
  #   as MLX's kernel has it) -> MLX's logsumexp kernel;
  # - layer norm: (x - mean) * rsqrt(var + eps) * g + b -> fast::layer_norm;
  # - RMS norm: x * rsqrt(mean(x^2) + eps) * w -> fast::rms_norm (both over
  #   the last axis; the same ops composed over others).
  # - a transposed product: a dot whose only use is a transpose (Nx's
  #   gradient of a dot transposes it) -> dot_transposed, which computes
  #   the product with its operands swapped when that is the transpose, so
  #   the result is contiguous and its consumers (a weight update) read it
  #   in order.
  #
  # On the CPU, float32 softmax, log_softmax and logsumexp stay composed:
  # EMLX's float32 exp there is Nx's (computed in double and rounded once)
  # and faster than the one in MLX's kernels (softmax 2048²: 31 ms composed
  # against 51 ms for MLX's softmax kernel on the bench's 2-core machine).

  @float [{:f, 32}, {:f, 16}, {:bf, 16}]

  @doc """
  The recorded program `instrs`, whose results `outputs` are, with fused
  kernels, for `device`.
  """
  def rewrite(instrs, outputs, device \\ :gpu) do
    {defs, _} =
      Enum.map_reduce(instrs, 0, fn instr, j -> {{{:out, j}, instr}, j + width(instr)} end)

    uses = Enum.reduce(instrs, count(outputs, %{}), fn {_, args, _}, acc -> count(args, acc) end)
    ctx = %{by_slot: Map.new(defs), uses: uses, device: device}
    Enum.map(instrs, &(fuse(&1, ctx) || &1))
  end

  # How many results an instruction has: loops and branches say it (the
  # recorder's third element), ops as the op table has it.
  defp width({op, _, n}) when op in [:while, :cond], do: n
  defp width({op, _, _}), do: EMLX.Ops.outputs(op)

  defp count({tag, _} = ref, acc) when tag in [:in, :out], do: Map.update(acc, ref, 1, &(&1 + 1))
  defp count(list, acc) when is_list(list), do: Enum.reduce(list, acc, &count/2)
  defp count(_other, acc), do: acc

  defp fuse({:divide, [e, z], t}, ctx) when t in @float do
    with true <- exp_kernel?(t, ctx),
         {:sum, [^e, axes, true], ^t} <- def_of(z, 1, ctx),
         {:exp, [s], ^t} <- def_of(e, 2, ctx),
         {x, ^axes} <- shifted(s, 1, t, ctx) do
      {:softmax, [x, axes], t}
    else
      _ -> nil
    end
  end

  defp fuse({:subtract, [s, l], t}, ctx) when t in @float,
    do: if(exp_kernel?(t, ctx), do: log_softmax(s, l, t, ctx))

  defp fuse({:add, [a, b], t} = instr, ctx) when t in @float do
    with nil <- exp_family(a, b, t, ctx),
         nil <- layer_norm(a, b, instr, ctx) do
      layer_norm(b, a, instr, ctx)
    end
  end

  defp fuse({:multiply, [u, v], t} = instr, ctx) when t in @float, do: rms_norm(u, v, instr, ctx)

  defp fuse({:transpose, [d, perm], nil}, ctx) do
    case def_of(d, 1, ctx) do
      {:dot, args, t} -> {:dot_transposed, args ++ [perm], t}
      _ -> nil
    end
  end

  defp fuse(_instr, _ctx), do: nil

  # Whether the softmax family fuses into MLX's kernels, whose exp is MLX's.
  defp exp_kernel?(t, %{device: device}), do: device != :cpu or t != {:f, 32}

  # a + b as Axon's log_softmax or Nx.logsumexp's form, either way round.
  defp exp_family(a, b, t, ctx) do
    if exp_kernel?(t, ctx) do
      with nil <- negated_log_softmax(a, b, t, ctx),
           nil <- negated_log_softmax(b, a, t, ctx),
           nil <- logsumexp(a, b, t, ctx) do
        logsumexp(b, a, t, ctx)
      end
    end
  end

  # s - log(sum(exp(s))), s the shifted input
  defp log_softmax(s, l, t, ctx) do
    with {x, axes} <- shifted(s, 2, t, ctx),
         {:log, [z], ^t} <- def_of(l, 1, ctx),
         {:sum, [e, ^axes, true], ^t} <- def_of(z, 1, ctx),
         {:exp, [^s], ^t} <- def_of(e, 1, ctx) do
      {:log_softmax, [x, axes], t}
    else
      _ -> nil
    end
  end

  # -log(sum(exp(s))) + s (Axon's log_softmax)
  defp negated_log_softmax(n, s, t, ctx) do
    case def_of(n, 1, ctx) do
      {:negate, [l], ^t} -> log_softmax(s, l, t, ctx)
      _ -> nil
    end
  end

  # log(sum(exp(x - m))) + m, m the max with infinities as 0 (Nx.logsumexp)
  defp logsumexp(l, m, t, ctx) do
    with {:log, [z], ^t} <- def_of(l, 1, ctx),
         {:sum, [e, axes, true], ^t} <- def_of(z, 1, ctx),
         {:exp, [s], ^t} <- def_of(e, 1, ctx),
         {:subtract, [x, ^m], ^t} <- def_of(s, 1, ctx),
         {:select, [mask, zero, m0], ^t} <- def_of(m, 2, ctx),
         {:full, [value, {}, ^t], ^t} when value == 0 <- def_of(zero, 1, ctx),
         {:is_infinity, [^m0], _} <- def_of(mask, 1, ctx),
         {:reduce_max, [^x, ^axes, true], ^t} <- def_of(m0, 2, ctx) do
      {:logsumexp, [x, axes, true], t}
    else
      _ -> nil
    end
  end

  # (x - mean) * rsqrt(var + eps) * g + bias over the same axes, the three
  # factors in any order and grouping (Axon's layer_norm: g * rsqrt(...)
  # first; the plain form: (x - mean) * rsqrt(...) first), the mean and
  # the variance as Nx.mean and Nx.variance record them. Fused only when
  # the pattern's intermediate results are its own.
  defp layer_norm(scaled, bias, {_, _, t} = final, ctx) do
    with {:multiply, [u, v], ^t} <- def_of(scaled, 1, ctx),
         {[_, _, _] = leaves, product} <- factors(u, v, t, ctx),
         {r, [ve], ^t} <- find_leaf(leaves, :rsqrt, ctx),
         {c, [x, mean], ^t} <- find_leaf(leaves, :subtract, ctx),
         [g] <- leaves -- [r, c],
         {^x, axes, n, mean_refs} <- mean(mean, t, ctx),
         {:add, [p, q], ^t} <- Map.get(ctx.by_slot, ve),
         {eps, var, eps_ref} <- constant_plus(p, q, t, ctx),
         {^x, ^axes, ^n, var_refs} <- variance_of(var, t, ctx),
         refs = [scaled, product, r, ve, eps_ref, c | mean_refs ++ var_refs],
         true <- own?(refs, final, ctx) do
      {:layer_norm_pattern, [x, g, bias, axes, n, eps], t}
    else
      _ -> nil
    end
  end

  # x * rsqrt(mean(x^2) + eps) * w over the same axes, the three factors in
  # any order and grouping (RMS norm, as Llama-style models write it).
  defp rms_norm(u, v, {_, _, t} = final, ctx) do
    with {[_, _, _] = leaves, product} <- factors(u, v, t, ctx),
         {r, [ve], ^t} <- find_leaf(leaves, :rsqrt, ctx),
         {:add, [p, q], ^t} <- Map.get(ctx.by_slot, ve),
         {eps, ms, eps_ref} <- constant_plus(p, q, t, ctx),
         {x, axes, n, ms_refs} <- mean_square(ms, t, ctx),
         [_, _] = rest <- leaves -- [r],
         true <- x in rest,
         [w] <- rest -- [x],
         refs = [product, r, ve, eps_ref | ms_refs],
         true <- own?(refs, final, ctx) do
      {:rms_norm_pattern, [x, w, axes, n, eps], t}
    else
      _ -> nil
    end
  end

  # The three factors of u * v, one of them (the product's ref, also
  # returned) a product itself.
  defp factors(u, v, t, ctx) do
    case {Map.get(ctx.by_slot, u), Map.get(ctx.by_slot, v)} do
      {{:multiply, [a, b], ^t}, _} -> {[a, b, v], u}
      {_, {:multiply, [a, b], ^t}} -> {[u, a, b], v}
      _ -> nil
    end
  end

  # The one leaf made by `op`: {ref, its operands, its type}.
  defp find_leaf(leaves, op, ctx) do
    case for(l <- leaves, match?({^op, _, _}, Map.get(ctx.by_slot, l)), do: l) do
      [l] ->
        {^op, args, t} = Map.fetch!(ctx.by_slot, l)
        {l, args, t}

      _ ->
        nil
    end
  end

  # sum(y, axes, keep_axes: true) / n, n a constant (Nx.mean): {y, axes, n, refs}
  defp mean(ref, t, ctx) do
    with {:divide, [sum, count], ^t} <- Map.get(ctx.by_slot, ref),
         {:sum, [y, axes, true], ^t} <- Map.get(ctx.by_slot, sum),
         {:full, [n, {}, _], _} when is_integer(n) and n > 0 <- Map.get(ctx.by_slot, count) do
      {y, axes, n, [ref, sum, count]}
    else
      _ -> nil
    end
  end

  # mean(d^2), the square as pow(d, 2) or d * d: {d, axes, n, refs}
  defp mean_square(ref, t, ctx) do
    with {sq, axes, n, mean_refs} <- mean(ref, t, ctx),
         {d, sq_refs} <- square_of(sq, t, ctx) do
      {d, axes, n, [sq | sq_refs ++ mean_refs]}
    end
  end

  # mean((x - mean(x))^2) over the axes (Nx.variance): {x, axes, n, refs}
  defp variance_of(ref, t, ctx) do
    with {d, axes, n, square_refs} <- mean_square(ref, t, ctx),
         {:subtract, [x, m], ^t} <- Map.get(ctx.by_slot, d),
         {^x, ^axes, ^n, mean_refs} <- mean(m, t, ctx) do
      {x, axes, n, [d | square_refs ++ mean_refs]}
    else
      _ -> nil
    end
  end

  defp square_of(sq, t, ctx) do
    case Map.get(ctx.by_slot, sq) do
      {:multiply, [d, d], ^t} ->
        {d, []}

      {:pow, [d, two], ^t} ->
        case Map.get(ctx.by_slot, two) do
          {:full, [2, {}, _], _} -> {d, [two]}
          _ -> nil
        end

      _ ->
        nil
    end
  end

  # eps + var or var + eps, eps a scalar constant: {eps, var, eps's ref}
  defp constant_plus(p, q, t, ctx) do
    case {Map.get(ctx.by_slot, p), Map.get(ctx.by_slot, q)} do
      {{:full, [eps, {}, ^t], ^t}, _} when is_number(eps) -> {eps / 1, q, p}
      {_, {:full, [eps, {}, ^t], ^t}} when is_number(eps) -> {eps / 1, p, q}
      _ -> nil
    end
  end

  # Every use of the refs is by the pattern's own instructions.
  defp own?(refs, final, ctx) do
    refs = Enum.uniq(refs)
    instrs = [final | Enum.map(refs, &Map.fetch!(ctx.by_slot, &1))]
    internal = Enum.reduce(instrs, %{}, fn {_, args, _}, acc -> count(args, acc) end)
    Enum.all?(refs, &(Map.get(ctx.uses, &1) == Map.get(internal, &1)))
  end

  # s = x - reduce_max(x, axes, keep_axes: true), s used `n` times: {x, axes}
  defp shifted(s, n, t, ctx) do
    with {:subtract, [x, m], ^t} <- def_of(s, n, ctx),
         {:reduce_max, [^x, axes, true], ^t} <- def_of(m, 1, ctx) do
      {x, axes}
    else
      _ -> nil
    end
  end

  # The instruction that makes `ref`, when `ref` is used exactly `n` times.
  defp def_of(ref, n, %{by_slot: by_slot, uses: uses}) do
    if Map.get(uses, ref) == n, do: Map.get(by_slot, ref)
  end
end
