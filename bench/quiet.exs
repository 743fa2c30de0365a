# Support for bench/emlx_bench.exs (required by it): waiting for a quiet
# machine before each workload (BENCH_QUIET).

defmodule BenchQuiet do
  @moduledoc false

  @doc """
  Waits (at most max_s seconds) until the CPUs are at least 90% idle over
  one second, from /proc/stat; returns that idle fraction (nil when max_s
  is 0, or without /proc/stat).
  """
  def wait_quiet(0), do: nil
  def wait_quiet(max_s), do: wait_until(System.monotonic_time(:second) + max_s)

  defp wait_until(deadline) do
    with {:ok, a} <- cpu_times(),
         :ok <- Process.sleep(1000),
         {:ok, b} <- cpu_times() do
      {idle, total} = {elem(b, 0) - elem(a, 0), elem(b, 1) - elem(a, 1)}
      frac = if total > 0, do: idle / total, else: 1.0

      if frac >= 0.9 or System.monotonic_time(:second) >= deadline,
        do: Float.round(frac, 3),
        else: wait_until(deadline)
    else
      _ -> nil
    end
  end

  # {idle + iowait, total} jiffies of all CPUs.
  defp cpu_times do
    with {:ok, stat} <- File.read("/proc/stat"),
         ["cpu" | fields] <- stat |> String.split("\n") |> hd() |> String.split() do
      values = Enum.map(fields, &String.to_integer/1)
      {:ok, {Enum.at(values, 3) + Enum.at(values, 4), Enum.sum(values)}}
    else
      _ -> :error
    end
  end
end
