# Support for bench/run_ahead.exs and bench/replay_vs_eager.exs (required by
# them): Python MLX's 10,000-add loop (bench/run_ahead.py) as a subprocess
# on the same device.

defmodule BenchPythonLoop do
  @moduledoc false

  @script Path.join(__DIR__, "run_ahead.py")

  @doc """
  Starts bench/run_ahead.py with `python` (a name on PATH or a path) on
  `device`; returns a function that runs the loop n times and gives the n
  times in µs.
  """
  def start(python, device) do
    path =
      if String.contains?(python, "/"),
        do: Path.expand(python),
        else: System.find_executable(python)

    port =
      Port.open({:spawn_executable, path}, [
        :binary,
        {:line, 100_000},
        args: [@script, to_string(device)]
      ])

    fn n ->
      Port.command(port, "#{n}\n")

      receive do
        {^port, {:data, {:eol, line}}} ->
          line |> String.split() |> Enum.map(&round(String.to_float(&1) * 1.0e6))
      after
        120_000 -> raise "no answer from #{@script}"
      end
    end
  end
end
