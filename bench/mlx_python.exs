# Loaded by bench/emlx_bench.exs: the port to Python MLX.

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
