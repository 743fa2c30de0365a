defmodule EMLX.Defn.Fusion do
  @moduledoc false
  # Rewrites of a recorded program into MLX's fused kernels, made once when
  # its plan is built (EMLX.Defn.Recorder.program/2). Each rewrite replaces
  # one instruction by an equivalent one, so every slot keeps its number;
  # the instructions it no longer needs stay in the program, and MLX, which
  # computes only what the outputs depend on, never runs them unless
  # something else uses them.
  #
  # Softmax: reduce_max (keep_axes), subtract, exp, sum (keep_axes) and
  # divide over the same axes, as Nx code writes it (Axon's softmax
  # activation, attention), becomes MLX's softmax kernel: one pass over the
  # data where the composed form makes five (and on the GPU, a float32 exp
  # computed in double that mx::compile cannot fuse).

  @float [{:f, 32}, {:f, 16}, {:bf, 16}]

  @doc "The program `instrs` (slots numbered, inputs first) with fused kernels."
  def rewrite(instrs, ninputs) do
    {defs, _} =
      Enum.map_reduce(instrs, ninputs, fn {op, _, _} = instr, slot ->
        {{slot, instr}, slot + EMLX.Ops.outputs(op)}
      end)

    by_slot = Map.new(defs)
    Enum.map(instrs, &softmax(&1, by_slot))
  end

  defp softmax({:divide, [e, z], t} = instr, by_slot) when t in @float do
    with {:sum, [^e, axes, true], ^t} <- by_slot[z],
         {:exp, [d], ^t} <- by_slot[e],
         {:subtract, [x, m], ^t} <- by_slot[d],
         {:reduce_max, [^x, ^axes, true], ^t} <- by_slot[m] do
      {:softmax, [x, axes], t}
    else
      _ -> instr
    end
  end

  defp softmax(instr, _by_slot), do: instr
end
