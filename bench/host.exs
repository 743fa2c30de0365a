# Support for bench/emlx_bench.exs (required by it): the Python MLX side,
# driven over a port, and waiting for a quiet machine (BENCH_QUIET).

defmodule MLXPython do
  @moduledoc false
  # Drives `bench/mlx_bench.py --serve` (Python MLX) over a port, so that
  # both sides of each workload are timed back to back: the background load
  # of a shared machine then weighs on both alike. The two never run at the
  # same time: the BEAM waits while Python works, and Python waits on its
  # stdin while EMLX works.

  def start(out_path, device, tf32) do
    python = System.get_env("BENCH_PYTHON", Path.expand("bench/.venv/bin/python"))

    executable =
      System.find_executable(python) ||
        raise "no Python at #{python}: run `bash bench/setup_venv.sh` (or set BENCH_PYTHON)"

    Port.open({:spawn_executable, executable}, [
      :binary,
      :exit_status,
      {:line, 65_536},
      args: ["bench/mlx_bench.py", "--serve", out_path],
      env: [
        {~c"BENCH_DEVICE", Atom.to_charlist(device)},
        {~c"MLX_ENABLE_TF32", String.to_charlist(tf32)}
      ]
    ])
  end

  # Runs workload `name` on Python MLX; returns its one-line summary.
  def run(port, name) do
    Port.command(port, name <> "\n")
    await(port, "done " <> name <> "\t")
  end

  def stop(port) do
    Port.command(port, "quit\n")
    "" = await(port, "bye")

    receive do
      {^port, {:exit_status, 0}} -> :ok
      {^port, {:exit_status, status}} -> raise "bench/mlx_bench.py exited with #{status}"
    end
  end

  # Waits for the line starting with `prefix`; returns the rest of it.
  defp await(port, prefix) do
    receive do
      {^port, {:data, {:eol, ^prefix <> rest}}} -> rest
      {^port, {:data, _other}} -> await(port, prefix)
      {^port, {:exit_status, status}} -> raise "bench/mlx_bench.py exited with #{status}"
    end
  end
end

defmodule BenchHost do
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
