defmodule EMLX.Defn.Fusion do
  @moduledoc false
  # Rewrites of a recorded program into MLX's fused kernels, made once when
  # its plan is built (EMLX.Defn.Recorder.program/2). Each rewrite replaces
  # one instruction by an equivalent one, so every slot keeps its number;
  # the instructions it no longer needs stay in the program, and MLX, which
  # computes only what the outputs depend on, never runs them unless
  # something else uses them. Each pattern starts from the max over the
  # axes (keep_axes) that Nx code subtracts first, so the fused kernel,
  # which does the same, gives the same values up to rounding.
  #
  # - softmax: reduce_max, subtract, exp, sum and divide over the same axes
  #   (Axon's softmax activation, attention) -> MLX's softmax kernel, one
  #   pass over the data where the composed form makes five;
  # - log_softmax: the same shifted input minus the log of the sum, as
  #   `s - log(z)` or Axon's `-log(z) + s` -> x - logsumexp(x);
  # - logsumexp: Nx.logsumexp's form (a max that is infinite counts as 0,
  #   as MLX's kernel has it) -> MLX's logsumexp kernel.

  @float [{:f, 32}, {:f, 16}, {:bf, 16}]

  @doc "The program `instrs` (slots numbered, inputs first) with fused kernels."
  def rewrite(instrs, ninputs) do
    {defs, _} =
      Enum.map_reduce(instrs, ninputs, fn {op, _, _} = instr, slot ->
        {{slot, instr}, slot + EMLX.Ops.outputs(op)}
      end)

    by_slot = Map.new(defs)
    Enum.map(instrs, &(fuse(&1, by_slot) || &1))
  end

  defp fuse({:divide, [e, z], t}, by_slot) when t in @float do
    with {:sum, [^e, axes, true], ^t} <- by_slot[z],
         {:exp, [s], ^t} <- by_slot[e],
         {x, ^axes} <- shifted(s, t, by_slot) do
      {:softmax, [x, axes], t}
    else
      _ -> nil
    end
  end

  defp fuse({:subtract, [s, l], t}, by_slot) when t in @float,
    do: log_softmax(s, l, t, by_slot)

  defp fuse({:add, [a, b], t}, by_slot) when t in @float do
    with nil <- negated_log_softmax(a, b, t, by_slot),
         nil <- negated_log_softmax(b, a, t, by_slot),
         nil <- logsumexp(a, b, t, by_slot) do
      logsumexp(b, a, t, by_slot)
    end
  end

  defp fuse(_instr, _by_slot), do: nil

  # s - log(sum(exp(s))), s the shifted input
  defp log_softmax(s, l, t, by_slot) do
    with {x, axes} <- shifted(s, t, by_slot),
         {:log, [z], ^t} <- by_slot[l],
         {:sum, [e, ^axes, true], ^t} <- by_slot[z],
         {:exp, [^s], ^t} <- by_slot[e] do
      {:log_softmax, [x, axes], t}
    else
      _ -> nil
    end
  end

  # -log(sum(exp(s))) + s (Axon's log_softmax)
  defp negated_log_softmax(n, s, t, by_slot) do
    case by_slot[n] do
      {:negate, [l], ^t} -> log_softmax(s, l, t, by_slot)
      _ -> nil
    end
  end

  # log(sum(exp(x - m))) + m, m the max with infinities as 0 (Nx.logsumexp)
  defp logsumexp(l, m, t, by_slot) do
    with {:log, [z], ^t} <- by_slot[l],
         {:sum, [e, axes, true], ^t} <- by_slot[z],
         {:exp, [s], ^t} <- by_slot[e],
         {:subtract, [x, ^m], ^t} <- by_slot[s],
         {:select, [mask, zero, m0], ^t} <- by_slot[m],
         {:full, [value, {}, ^t], ^t} when value == 0 <- by_slot[zero],
         {:is_infinity, [^m0], _} <- by_slot[mask],
         {:reduce_max, [^x, ^axes, true], ^t} <- by_slot[m0] do
      {:logsumexp, [x, axes, true], t}
    else
      _ -> nil
    end
  end

  # s = x - reduce_max(x, axes, keep_axes: true): {x, axes}
  defp shifted(s, t, by_slot) do
    with {:subtract, [x, m], ^t} <- by_slot[s],
         {:reduce_max, [^x, axes, true], ^t} <- by_slot[m] do
      {x, axes}
    else
      _ -> nil
    end
  end
end
