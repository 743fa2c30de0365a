defmodule EMLX.DefnBoundTest do
  # EMLX.Defn.Bound: a compiled function with its leading arguments bound
  # once (the decoder's weights). Its calls must give what the compiled
  # function gives, check the other arguments, and fall back to the
  # compiled function when there is no plan to reuse.
  use EMLX.Case, async: true

  alias EMLX.Defn.Bound

  defp layer(%{w: w, b: b}, x, scale), do: Nx.multiply(Nx.add(Nx.dot(x, w), b), scale)

  defp params do
    %{
      w: Nx.iota({3, 4}, type: :f32) |> Nx.divide(7),
      b: Nx.tensor([0.5, -1.0, 2.0, 0.25])
    }
  end

  test "calls with new free arguments give what the compiled function gives" do
    p = params()
    x1 = Nx.iota({2, 3}, type: :f32)
    {first, bound} = Bound.new(&layer/3, [p, x1, Nx.tensor(2.0)], 1, [])
    assert bound.plan != nil

    compiled = Nx.Defn.jit(&layer/3, compiler: EMLX)
    assert Nx.to_list(first) == Nx.to_list(compiled.(p, x1, Nx.tensor(2.0)))

    for k <- 1..3 do
      x = Nx.iota({2, 3}, type: :f32) |> Nx.add(k)
      s = Nx.tensor(k * 0.5)
      got = Bound.run(bound, [x, s])
      want = Nx.Defn.jit(&layer/3, compiler: Nx.Defn.Evaluator).(p, x, s)
      assert Nx.to_list(got) == Nx.to_list(Nx.backend_transfer(want, Nx.BinaryBackend))
    end
  end

  test "the bound arrays live as long as the bound function: the caller may drop its tensors" do
    make = fn ->
      {_, bound} =
        Bound.new(&layer/3, [params(), Nx.iota({2, 3}, type: :f32), Nx.tensor(1.0)], 1, [])

      bound
    end

    bound = make.()
    # the weights' only other handles (the map built inside make) are garbage now
    :erlang.garbage_collect()
    x = Nx.iota({2, 3}, type: :f32)
    want = Nx.Defn.jit(&layer/3, compiler: Nx.Defn.Evaluator).(params(), x, Nx.tensor(3.0))
    assert Nx.to_list(Bound.run(bound, [x, Nx.tensor(3.0)])) == Nx.to_list(want)
  end

  test "free arguments of another shape or type raise" do
    {_, bound} =
      Bound.new(&layer/3, [params(), Nx.iota({2, 3}, type: :f32), Nx.tensor(1.0)], 1, [])

    assert_raise ArgumentError, ~r/do not match the templates/, fn ->
      Bound.run(bound, [Nx.iota({5, 3}, type: :f32), Nx.tensor(1.0)])
    end

    assert_raise ArgumentError, ~r/do not match the templates/, fn ->
      Bound.run(bound, [Nx.iota({2, 3}, type: :f32), Nx.tensor(1, type: :s32)])
    end

    assert_raise ArgumentError, ~r/do not match the templates/, fn ->
      Bound.run(bound, [Nx.iota({2, 3}, type: :f32)])
    end
  end

  test "a vectorized free argument does not match a plain template" do
    {_, bound} =
      Bound.new(&layer/3, [params(), Nx.iota({2, 3}, type: :f32), Nx.tensor(1.0)], 1, [])

    x = Nx.iota({1, 2, 3}, type: :f32) |> Nx.vectorize(:rows)

    assert_raise ArgumentError, ~r/do not match the templates/, fn ->
      Bound.run(bound, [x, Nx.tensor(1.0)])
    end
  end

  test "free arguments that are not all tensors (a number) leave the compiled function" do
    fun = fn p, x, k -> Nx.multiply(Nx.add(x, p), k) end
    {first, bound} = Bound.new(fun, [Nx.tensor([1.0, 2.0]), Nx.tensor([3.0, 4.0]), 2.0], 1, [])
    assert bound.plan == nil
    assert Nx.to_list(first) == [8.0, 12.0]
    assert Nx.to_list(Bound.run(bound, [Nx.tensor([0.0, 1.0]), 3.0])) == [3.0, 9.0]
  end

  test "a function with no reusable plan (a hook) runs as the compiled function" do
    parent = self()

    fun = fn p, x ->
      Nx.Defn.Kernel.hook(Nx.add(x, p), &send(parent, {:hooked, Nx.to_list(&1)}))
    end

    {first, bound} = Bound.new(fun, [Nx.tensor([1.0, 2.0]), Nx.tensor([3.0, 4.0])], 1, [])
    assert bound.plan == nil
    assert Nx.to_list(first) == [4.0, 6.0]
    assert_received {:hooked, [4.0, 6.0]}

    assert Nx.to_list(Bound.run(bound, [Nx.tensor([10.0, 20.0])])) == [11.0, 22.0]
    assert_received {:hooked, [11.0, 22.0]}
  end
end
