defmodule EMLX.SoakTest do
  @moduledoc """
  A million small tensors created and dropped, in batches across a few
  processes and two command queues, with garbage collection forced after
  every batch. MLX's active memory must come back to its baseline and the
  BEAM's resident set must not grow (by 5% or more) between a warm-up point
  and the end: no array, job, environment or binary may leak.

  `EMLX_SOAK_TENSORS` changes the count (default 1_000_000).
  """
  use EMLX.Case, async: false

  alias EMLX.{NIF, Worker}

  @moduletag timeout: 600_000

  @warmup 100_000
  @procs 4
  @batch 1_000

  test "a million small tensors leave MLX active memory at its baseline and RSS flat" do
    tensors = String.to_integer(System.get_env("EMLX_SOAK_TENSORS", "1000000"))
    queues = [EMLX.Application.default_worker(device()), EMLX.CommandQueue.new!(device()).ref]

    assert churn(queues, @warmup) >= @warmup
    base = settle(queues, :infinity)
    rss_before = rss_kb()
    EMLX.reset_peak_memory()

    {us, made} = :timer.tc(fn -> churn(queues, tensors) end)
    active = settle(queues, base)
    peak = EMLX.memory_info().peak_memory
    rss_after = rss_kb()
    rate = made / (us / 1.0e6)

    IO.puts("""

    soak: #{made} tensors in #{Float.round(us / 1.0e6, 1)} s (#{round(rate)} tensors/s, #{@procs} processes, 2 queues)
      MLX active memory: baseline #{base} B, peak while churning #{peak} B, after #{active} B
      BEAM VmRSS: after warm-up #{rss_before} kB, at the end #{rss_after} kB (#{Float.round((rss_after - rss_before) * 100 / rss_before, 2)}%)
    """)

    assert made >= tensors
    # the arrays did take MLX memory, and all of it came back
    assert peak > base
    assert active <= base

    # Under AddressSanitizer (make asan-test) freed memory is held in ASAN's
    # quarantine and the resident set grows by design: there only MLX's
    # own accounting is checked.
    if String.contains?(System.get_env("LD_PRELOAD", ""), "asan"),
      do: IO.puts("  (AddressSanitizer: the VmRSS bound is not checked)"),
      else: assert(rss_after < rss_before * 1.05)
  end

  # Creates at least `n` tensors across @procs processes and returns how
  # many were made. Each process drops its batch and collects garbage
  # before the next one, and exits at the end.
  defp churn(queues, n) do
    per_proc = div(n + @procs - 1, @procs)

    1..@procs
    |> Enum.map(fn p ->
      q = Enum.at(queues, rem(p, length(queues)))
      Task.async(fn -> run_batches(q, per_proc, 0, 0) end)
    end)
    |> Task.await_many(:infinity)
    |> Enum.sum()
  end

  defp run_batches(_q, target, made, _b) when made >= target, do: made

  defp run_batches(q, target, made, b) do
    made = made + batch(q, b)
    :erlang.garbage_collect()
    run_batches(q, target, made, b + 1)
  end

  # One batch: @batch arrays from binaries (posted at once, then awaited),
  # element-wise products of a quarter of them, evaluated, some read back,
  # an eighth deallocated explicitly; every tenth batch goes through the
  # public Nx API instead.
  defp batch(q, b) when rem(b, 10) == 9 do
    queue = %EMLX.CommandQueue{ref: q, device: device()}

    EMLX.CommandQueue.with_queue(queue, fn ->
      Enum.reduce(1..div(@batch, 2), 0, fn i, made ->
        t = Nx.from_binary(<<i::float-32-native, b::float-32-native>>, :f32)
        sum = Nx.add(t, t)
        [x, y] = Nx.to_list(sum)
        true = x == 2.0 * i and y == 2.0 * b
        made + 2
      end)
    end)
  end

  defp batch(q, b) do
    bin = <<b::float-32-native, 1.0::float-32-native, 2.0::float-32-native, 3.0::float-32-native>>

    # arrays made from binaries return at once too (small ones on a CPU
    # queue made already, others pending)
    arrays = for _ <- 1..@batch, do: Worker.from_binary(q, bin, {4}, {:f, 32})

    # ops return their (pending) results at once
    products = for a <- Enum.take_every(arrays, 4), do: Worker.run_op(q, :multiply, [a, a], nil)
    :ok = NIF.eval(q, products) |> Worker.await()

    # some arrays are dropped explicitly, the rest by garbage collection
    for a <- Enum.take_every(arrays, 8), do: :ok = NIF.deallocate(a)

    square =
      <<b * b::float-32-native, 1.0::float-32-native, 4.0::float-32-native, 9.0::float-32-native>>

    for(p <- Enum.take_every(products, 25), do: NIF.to_binary(q, p, 16))
    |> Enum.each(fn ref -> ^square = Worker.await(ref) end)

    length(arrays) + length(products)
  end

  # Waits until every dropped array has been freed: array destructors post
  # their frees to the arrays' queues, so a sync of each queue after a
  # garbage collection has seen them all. Returns the active memory.
  defp settle(queues, target, tries \\ 100) do
    :erlang.garbage_collect()
    Enum.each(queues, &(NIF.queue_sync(&1) |> Worker.await()))
    active = EMLX.memory_info().active_memory

    if active <= target or tries == 0 do
      active
    else
      Process.sleep(50)
      settle(queues, target, tries - 1)
    end
  end

  defp rss_kb do
    [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/self/status"))
    String.to_integer(kb)
  end
end
