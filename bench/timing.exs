# Support for bench/emlx_bench.exs (required by it): forcing evaluation,
# checksums and the timing of one side of a workload.

defmodule BenchTiming do
  @moduledoc false

  ## Forcing evaluation: MLX arrays are lazy until evaluated, and GPU work
  ## is asynchronous: EMLX.eval waits for it, so forcing every output inside
  ## the timed region counts all of it. All outputs go to one EMLX.eval (one
  ## round trip per queue), as Python evaluates them with one mx.eval.

  def evaluated(tree) do
    force(tree)
    tree
  end

  def force(tree), do: EMLX.eval(tree)

  # The sum of |x| over every output element (as f32), to check that the
  # sides agree.
  def checksum(%Nx.Tensor{} = t),
    do: t |> Nx.as_type(:f32) |> Nx.abs() |> Nx.sum() |> Nx.to_number()

  def checksum(tuple) when is_tuple(tuple), do: checksum(Tuple.to_list(tuple))
  def checksum(%{} = map), do: map |> Enum.sort() |> Enum.map(&elem(&1, 1)) |> checksum()
  def checksum(list) when is_list(list), do: list |> Enum.map(&checksum/1) |> Enum.sum()

  ## Timing: warm up (at least once, until 0.25 s have passed, at most 5
  ## runs), then timed runs until both min_iters runs and target_s seconds
  ## are done (at most max_iters runs); the median of those, divided by
  ## `reps` (the times the function repeats its step).

  ## `device` (EMLX sides) also measures MLX's peak memory over the timed
  ## runs: dead arrays of earlier work are swept first, and the peak counter
  ## reset, so the peak is that of the workload's inputs, the first run's
  ## output (kept for the checksum) and what each run allocates.

  def measure(fun, target_s, min_iters, max_iters, reps \\ 1, device \\ nil) do
    {first_s, out} = timed(fun)
    warm_up(fun, first_s, 1)
    if device, do: reset_peak(device)
    times = timed_runs(fun, [], target_s, min_iters, max_iters) |> Enum.map(&(&1 / reps))

    %{
      median_s: median(times),
      min_s: Enum.min(times),
      iters: length(times),
      checksum: checksum(out),
      peak_bytes: if(device, do: EMLX.memory_info().peak_memory)
    }
  end

  @doc """
  One side's results over the rounds of a workload (BENCH_ROUNDS), each a
  `measure/6` result, `{:error, _}` or `:skipped`: the median of the
  rounds' medians, the fastest run of all, every run counted, the largest
  peak, and `round_s`, each round's median. The first error stands for
  the side.
  """
  def combine_rounds([single]), do: single

  def combine_rounds(results) do
    case Enum.find(results, &(not match?({:ok, _}, &1))) do
      nil ->
        rounds = Enum.map(results, fn {:ok, r} -> r end)
        peaks = rounds |> Enum.map(& &1.peak_bytes) |> Enum.reject(&is_nil/1)

        {:ok,
         %{
           median_s: rounds |> Enum.map(& &1.median_s) |> median(),
           min_s: rounds |> Enum.map(& &1.min_s) |> Enum.min(),
           iters: rounds |> Enum.map(& &1.iters) |> Enum.sum(),
           checksum: hd(rounds).checksum,
           peak_bytes: if(peaks != [], do: Enum.max(peaks)),
           round_s: Enum.map(rounds, & &1.median_s)
         }}

      other ->
        other
    end
  end

  defp reset_peak(device) do
    :erlang.garbage_collect()
    EMLX.GC.sweep(EMLX.CommandQueue.resolve(device))
    EMLX.reset_peak_memory()
  end

  defp warm_up(_fun, spent, runs) when spent >= 0.25 or runs >= 5, do: :ok
  defp warm_up(fun, spent, runs), do: warm_up(fun, spent + elem(timed(fun), 0), runs + 1)

  defp timed_runs(fun, times, target_s, min_iters, max_iters) do
    n = length(times)

    if n >= max_iters or (n >= min_iters and Enum.sum(times) >= target_s) do
      times
    else
      timed_runs(fun, [elem(timed(fun), 0) | times], target_s, min_iters, max_iters)
    end
  end

  defp timed(fun) do
    t0 = System.monotonic_time()
    out = fun.()
    force(out)
    t1 = System.monotonic_time()
    {System.convert_time_unit(t1 - t0, :native, :nanosecond) / 1.0e9, out}
  end

  def median(times) do
    sorted = Enum.sort(times)
    n = length(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end
end
