defmodule EMLX.BoundsTest do
  # Checks of values the host already has (EMLX.Backend.Bounds): indices
  # and shift amounts given as computed tensors raise as Nx.BinaryBackend
  # does, with its messages; lazy ones are not read. On the CPU (the GPU
  # reads only evaluated arrays of up to 8 bytes in place; literals keep
  # their bytes on either device).
  use ExUnit.Case, async: true

  setup do
    Nx.default_backend({EMLX.Backend, device: :cpu})
    :ok
  end

  defp t, do: Nx.tensor([[1, 2], [3, 4]])

  test "gather, indexed_add and indexed_put raise on an out-of-bounds literal index" do
    for fun <- [
          &Nx.gather(t(), &1),
          &Nx.indexed_add(t(), &1, Nx.tensor([1])),
          &Nx.indexed_put(t(), &1, Nx.tensor([1]))
        ] do
      assert_raise ArgumentError, "index 3 is out of bounds for axis 0 in shape {2, 2}", fn ->
        fun.(Nx.tensor([[3, -10]]))
      end

      assert_raise ArgumentError, "index -1 is out of bounds for axis 1 in shape {2, 2}", fn ->
        fun.(Nx.tensor([[0, -1]]))
      end
    end
  end

  test "the reported shape has the indexed axes first, as Nx.BinaryBackend's" do
    x = Nx.iota({2, 3})

    assert_raise ArgumentError, "index 3 is out of bounds for axis 0 in shape {3, 2}", fn ->
      Nx.gather(x, Nx.tensor([[3]], type: :u8), axes: [1])
    end

    assert Nx.to_flat_list(Nx.gather(x, Nx.tensor([[2]]), axes: [1])) == [2, 5]
  end

  test "computed indices are checked once evaluated" do
    idx = Nx.tensor([[1], [3]]) |> Nx.add(0) |> EMLX.eval()

    assert_raise ArgumentError, "index 3 is out of bounds for axis 0 in shape {3, 2}", fn ->
      Nx.indexed_put(Nx.iota({2, 3}), idx, Nx.tensor([[1, 1], [1, 1]]), axes: [1])
    end
  end

  test "indices in bounds give Nx's results" do
    assert Nx.to_flat_list(Nx.gather(t(), Nx.tensor([[1, 1], [0, 1]]))) == [4, 2]

    assert Nx.to_flat_list(Nx.indexed_add(t(), Nx.tensor([[1, 0]]), Nx.tensor([10]))) == [
             1,
             2,
             13,
             4
           ]
  end

  test "a negative literal shift amount raises" do
    assert_raise ArgumentError, "cannot left shift by -1", fn ->
      Nx.left_shift(Nx.tensor([1, 2]), Nx.tensor([2, -1]))
    end

    assert_raise ArgumentError, "cannot right shift by -3", fn ->
      Nx.right_shift(Nx.tensor(8), Nx.tensor([-3, 1]))
    end

    assert Nx.to_flat_list(Nx.left_shift(Nx.tensor([1, 2]), Nx.tensor([2, 1]))) == [4, 4]

    # a number operand: Nx makes it a scalar constant, whose value EMLX keeps
    assert_raise ArgumentError, "cannot left shift by -1", fn ->
      Nx.left_shift(Nx.tensor(1), -1)
    end

    assert_raise ArgumentError, "cannot right shift by -1", fn ->
      Nx.right_shift(Nx.tensor(1), -1)
    end

    assert Nx.to_flat_list(Nx.right_shift(Nx.tensor([8]), 2)) == [2]
  end

  test "lazy indices and compiled programs are not read: the indices are clamped" do
    lazy = Nx.add(Nx.tensor([[3, 0], [-5, 1]]), 0)
    assert Nx.to_flat_list(Nx.gather(t(), lazy)) == [3, 2]

    gather = Nx.Defn.jit(&Nx.gather/2, compiler: EMLX, device: :cpu)
    assert Nx.to_flat_list(gather.(t(), Nx.tensor([[3, 0]]))) == [3]
  end
end
