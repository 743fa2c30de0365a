defmodule EMLX.PendingTest do
  # A cached plan's run is posted like an op: its outputs come back pending
  # and the worker fills them in queue order. A job posted to read a pending
  # array gets it even when the tensor is deallocated before the job runs
  # (the decoder lets go of each step's caches that way); the tensor itself
  # is gone for its owner at once.
  use EMLX.Case, async: true

  import Nx.Defn

  alias EMLX.CommandQueue

  defn step(x, w), do: Nx.tanh(Nx.dot(x, w)) + 1

  defp on(fun), do: CommandQueue.with_queue(CommandQueue.new!(device()), fun)

  defp tensor(data), do: Nx.tensor(data, type: :f32, backend: {EMLX.Backend, device: device()})

  defp binary(t), do: Nx.backend_copy(t, Nx.BinaryBackend)

  defp close?(t, expected), do: Nx.to_number(Nx.all_close(binary(t), expected, atol: 1.0e-5)) == 1

  # The compiled step and its weight, after the call that records the plan.
  defp recorded(x) do
    f = Nx.Defn.jit(&step/2, compiler: EMLX)
    w = tensor([[0.5, -0.25], [0.125, 1.0]])
    _ = f.(x, w) |> EMLX.eval()
    {f, w}
  end

  test "a cached plan's outputs feed later calls and ops before they are computed" do
    on(fn ->
      f = Nx.Defn.jit(&step/2, compiler: EMLX)
      w = tensor([[0.5, -0.25], [0.125, 1.0]])
      x = tensor([[1.0, 2.0]])
      # the first call records; the others run the cached plan
      ys = Enum.scan(1..30, x, fn _, acc -> f.(acc, w) end)

      reference =
        Enum.scan(1..30, binary(x), fn _, acc ->
          Nx.Defn.jit_apply(&step/2, [acc, binary(w)], compiler: Nx.Defn.Evaluator)
        end)

      for {y, r} <- Enum.zip(ys, reference) do
        assert close?(y, r)
      end
    end)
  end

  test "deallocated while a posted job still reads it" do
    on(fn ->
      x = tensor([[1.0, 2.0]])
      {f, w} = recorded(x)

      for _ <- 1..20 do
        y = f.(x, w)
        z = f.(y, w)
        sum = Nx.add(y, 10.0)
        assert Nx.backend_deallocate(y) == :ok
        assert_raise ArgumentError, ~r/deallocated/, fn -> Nx.to_list(y) end

        expected_y = Nx.Defn.jit_apply(&step/2, [binary(x), binary(w)])
        expected_z = Nx.Defn.jit_apply(&step/2, [expected_y, binary(w)])
        assert close?(z, expected_z)
        assert close?(sum, Nx.add(expected_y, 10.0))
      end
    end)
  end

  test "a pending output deallocated before any reader was posted is gone for every call" do
    on(fn ->
      {f, w} = recorded(tensor([[1.0, 2.0]]))
      y = f.(tensor([[3.0, 4.0]]), w)
      assert Nx.backend_deallocate(y) == :ok
      assert_raise ArgumentError, ~r/deallocated/, fn -> f.(y, w) end
      assert_raise ArgumentError, ~r/deallocated/, fn -> Nx.add(y, 1.0) end
      # the queue goes on
      z = f.(tensor([[0.0, 0.0]]), w)
      assert close?(z, Nx.tensor([[1.0, 1.0]]))
    end)
  end
end
