defmodule EMLX.RunAheadTest do
  @moduledoc """
  Run-ahead: a queue whose worker has caught up with its caller starts the
  lazy graph of its eager ops every `:run_ahead` ops (on by default on
  `:gpu` queues, off on `:cpu` ones).
  """
  use EMLX.Case, async: true

  alias EMLX.{NIF, Worker}

  defp queue_with(run_ahead), do: EMLX.CommandQueue.new!(device(), run_ahead: run_ahead)

  # n chained adds of ones on f32[4], posted one at a time: every result
  defp chain(q, n) do
    x = Worker.from_binary(q, :binary.copy(<<0.0::float-32-native>>, 4), {4}, {:f, 32})
    one = Worker.from_binary(q, <<1.0::float-32-native>>, {1}, {:f, 32})

    Enum.scan(1..n, x, fn _, acc -> Worker.run_op(q, :add, [acc, one], {:f, 32}) end)
  end

  defp read(q, ref), do: NIF.to_binary(q, ref, 16) |> Worker.await()

  defp scheduled_within?(ref, ms) do
    Enum.any?(0..div(ms, 10), fn _ ->
      NIF.array_scheduled(ref) or (Process.sleep(10) && false)
    end)
  end

  test "with a count, the worker computes posted ops before anything reads them" do
    %EMLX.CommandQueue{ref: q} = queue_with(8)
    results = chain(q, 64)
    assert NIF.queue_drain(q) |> Worker.await() == :ok

    # the 8th op started a background eval of its graph
    assert scheduled_within?(Enum.at(results, 7), 2_000)
    # the values are those of the lazy graph
    assert read(q, List.last(results)) == :binary.copy(<<64.0::float-32-native>>, 4)
  end

  test "with 0, posted ops stay lazy until read" do
    %EMLX.CommandQueue{ref: q} = queue_with(0)
    results = chain(q, 64)
    assert NIF.queue_drain(q) |> Worker.await() == :ok
    Process.sleep(100)
    refute Enum.any?(results, &NIF.array_scheduled/1)
    assert_raise ArgumentError, ~r/run_ahead/, fn -> queue_with(-2) end
    assert read(q, List.last(results)) == :binary.copy(<<64.0::float-32-native>>, 4)
  end
end
