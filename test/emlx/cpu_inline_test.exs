defmodule EMLX.CpuInlineTest do
  # A CPU queue's worker runs its stream's tasks itself when it waits for
  # them (c_src/shim/cpu_inline.cpp): small evals run there, big ones and
  # async ones keep MLX's stream thread serving. These tests switch between
  # the two ways, on several queues at once, and check every value.
  use EMLX.Case, async: true

  import Nx.Defn

  alias EMLX.CommandQueue

  defn count_to(x, n) do
    {x, _i, _n} =
      while {x, i = 0, n}, i < n do
        {x + 1.0, i + 1, n}
      end

    x
  end

  defp on(q, fun), do: CommandQueue.with_queue(q, fun)

  test "small evals in a row, then a chain big enough for MLX's task throttle" do
    q = CommandQueue.new!(device())

    on(q, fn ->
      x = Nx.tensor([1.0, 2.0, 3.0, 4.0], backend: {EMLX.Backend, device: device()})

      acc =
        Enum.reduce(1..50, x, fn _, acc ->
          acc |> Nx.add(1.0) |> EMLX.eval()
        end)

      assert Nx.to_list(acc) == [51.0, 52.0, 53.0, 54.0]

      # 3,000 lazy ops evaluated at once: many more tasks than MLX lets
      # pend before an eval waits for the stream thread
      big = Enum.reduce(1..3_000, acc, fn _, a -> Nx.add(a, 1.0) end)
      assert Nx.to_list(big) == [3051.0, 3052.0, 3053.0, 3054.0]

      # and small again
      assert Nx.to_list(Nx.multiply(big, 2.0)) == [6102.0, 6104.0, 6106.0, 6108.0]
    end)
  end

  test "async_eval, then reads and small evals, step after step" do
    q = CommandQueue.new!(device())

    on(q, fn ->
      x = Nx.iota({64}, type: :f32, backend: {EMLX.Backend, device: device()})

      final =
        Enum.reduce(1..40, x, fn i, acc ->
          step = Enum.reduce(1..(rem(i, 7) * 20)//1, acc, fn _, a -> Nx.add(a, 0.5) end)
          EMLX.async_eval(step)
          # a small read while the step may still be running
          assert Nx.to_number(Nx.sum(Nx.slice(acc, [0], [2]))) ==
                   Nx.to_number(acc[0]) + Nx.to_number(acc[1])

          step
        end)

      added = Enum.sum(for i <- 1..40, do: rem(i, 7) * 20) * 0.5
      assert Nx.to_list(final) == Enum.map(0..63, &(&1 + added))
    end)
  end

  test "eight queues at once, small and big evals mixed" do
    results =
      on_own_queues(8, fn k ->
        t = Nx.broadcast(Nx.tensor(k * 1.0, backend: {EMLX.Backend, device: device()}), {16})

        Enum.reduce(1..60, t, fn i, acc ->
          n = if rem(i, 10) == 0, do: 200, else: 1
          next = Enum.reduce(1..n, acc, fn _, a -> Nx.add(a, 1.0) end)
          EMLX.eval(next)
        end)
        |> Nx.to_list()
      end)

    for {{_ref, result}, k} <- Enum.zip(results, 1..8) do
      # 54 steps of one add and 6 of 200
      assert result == List.duplicate(k + 54.0 + 6 * 200.0, 16)
    end
  end

  test "a compiled while loop reads its condition on the worker at every iteration" do
    q = CommandQueue.new!(device())

    on(q, fn ->
      f = Nx.Defn.jit(&count_to/2, compiler: EMLX)
      x = f.(Nx.tensor([0.0, 1.0], backend: {EMLX.Backend, device: device()}), 500)
      assert Nx.to_list(x) == [500.0, 501.0]
    end)
  end

  test "an error raised while a task runs on the worker reaches the caller, and the queue goes on" do
    q = CommandQueue.new!(device())

    on(q, fn ->
      for _ <- 1..10, do: EMLX.eval(Nx.add(Nx.tensor([1.0], backend: EMLX.Backend), 1.0))
      # the singular check reads a computed value on the worker
      a = Nx.tensor([[0.0, 0.0], [1.0, 1.0]], backend: {EMLX.Backend, device: device()})

      assert_raise ArgumentError, ~r/singular/, fn ->
        Nx.LinAlg.triangular_solve(a, Nx.tensor([1.0, 2.0], backend: EMLX.Backend))
      end

      assert Nx.to_list(Nx.add(a, 1.0)) == [[1.0, 1.0], [2.0, 2.0]]

      # an error of MLX's on this queue
      assert_raise EMLX.NIFError, fn ->
        EMLX.NIF.op(EMLX.resolve_worker(device()), :reshape, [a.data.ref, {3}], nil)
        |> then(&EMLX.NIF.eval(EMLX.resolve_worker(device()), [&1]))
        |> EMLX.Worker.await()
      end

      assert Nx.to_list(Nx.multiply(a, 2.0)) == [[0.0, 0.0], [2.0, 2.0]]
    end)
  end

  test "a queue that goes away takes its stream thread's loop with it" do
    for _ <- 1..20 do
      q = CommandQueue.new!(device())

      on(q, fn ->
        assert Nx.to_list(Nx.add(Nx.tensor([1.0], backend: EMLX.Backend), 1.0)) == [2.0]
      end)
    end

    :erlang.garbage_collect()
    q = CommandQueue.new!(device())
    on(q, fn -> assert Nx.to_list(Nx.iota({3}, backend: EMLX.Backend)) == [0, 1, 2] end)
  end
end
