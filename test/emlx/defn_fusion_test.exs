defmodule EMLX.DefnFusionTest do
  use EMLX.Case, async: true
  import Nx.Defn

  alias EMLX.Defn.Fusion

  defn softmax(x) do
    e = Nx.exp(x - Nx.reduce_max(x, axes: [-1], keep_axes: true))
    e / Nx.sum(e, axes: [-1], keep_axes: true)
  end

  # Axon's activation: the max under stop_grad, over axis 0 here
  defn softmax_first_axis(x) do
    max = x |> Nx.reduce_max(axes: [0], keep_axes: true) |> stop_grad()
    e = Nx.exp(x - max)
    e / Nx.sum(e, axes: [0], keep_axes: true)
  end

  # the exp is an output too: the softmax is fused, the exp still computed
  defn softmax_and_exp(x) do
    e = Nx.exp(x - Nx.reduce_max(x, axes: [1], keep_axes: true))
    {e / Nx.sum(e, axes: [1], keep_axes: true), e}
  end

  # the shape of softmax with other axes for the max and the sum: not fused
  defn mismatched(x) do
    e = Nx.exp(x - Nx.reduce_max(x, axes: [0], keep_axes: true))
    e / Nx.sum(e, axes: [1], keep_axes: true)
  end

  @softmax [
    {:reduce_max, [0, [1], true], {:f, 32}},
    {:subtract, [0, 1], {:f, 32}},
    {:exp, [2], {:f, 32}},
    {:sum, [3, [1], true], {:f, 32}},
    {:divide, [3, 4], {:f, 32}}
  ]

  test "the softmax pattern becomes one softmax in place of the divide, every slot kept" do
    assert Fusion.rewrite(@softmax, 1) ==
             List.replace_at(@softmax, 4, {:softmax, [0, [1]], {:f, 32}})

    # other axes for the sum, another input for the max, an integer type: as is
    other_axes = List.replace_at(@softmax, 3, {:sum, [3, [0], true], {:f, 32}})
    assert Fusion.rewrite(other_axes, 1) == other_axes
    other_input = List.replace_at(@softmax, 0, {:reduce_max, [1, [1], true], {:f, 32}})
    assert Fusion.rewrite(other_input, 2) == other_input
    ints = Enum.map(@softmax, fn {op, args, _} -> {op, args, {:s, 32}} end)
    assert Fusion.rewrite(ints, 1) == ints

    # slots after a multi-result op are counted by its results
    shifted = [{:qr, [0, false], {:f, 32}} | Enum.map(@softmax, &shift(&1, 2))]
    fused = Fusion.rewrite(shifted, 1)
    assert List.last(fused) == {:softmax, [0, [1]], {:f, 32}}
  end

  # the pattern's slots moved by n, its input (slot 0) left where it is
  defp shift({op, args, t}, n),
    do: {op, Enum.map(args, &if(is_integer(&1) and &1 > 0, do: &1 + n, else: &1)), t}

  test "compiled results agree with Nx.BinaryBackend's composed ops" do
    {x, _} = Nx.Random.normal(Nx.Random.key(7), 0.0, 3.0, shape: {6, 33}, type: :f32)

    for {fun, tol} <- [
          {&softmax/1, 1.0e-6},
          {&softmax_first_axis/1, 1.0e-6},
          {&softmax_and_exp/1, 1.0e-6},
          {&mismatched/1, 1.0e-6}
        ],
        type <- [:f32, :bf16] do
      tol = if type == :bf16, do: 1.0e-2, else: tol
      input = Nx.as_type(x, type)
      want = fun.(input)
      got = Nx.Defn.jit(fun, compiler: EMLX).(Nx.backend_copy(input, EMLX.Backend))

      for {g, w} <- Enum.zip(List.wrap(tuple_or(got)), List.wrap(tuple_or(want))) do
        assert g.type == w.type
        assert Nx.all_close(to_bin(g), w, atol: tol, rtol: tol) |> Nx.to_number() == 1
      end
    end
  end

  defp tuple_or(t) when is_tuple(t), do: Tuple.to_list(t)
  defp tuple_or(t), do: t
end
