# Run-ahead (EMLX.CommandQueue's :run_ahead) against Python MLX: 10,000
# chained Nx.add on f32[4], then a read, on queues made with each count in
# one VM, and Python MLX's same loop (bench/run_ahead.py, a subprocess on
# the same device), interleaved: ROUNDS rounds (default 40) of 5 runs a
# side, the order alternating by round. Each EMLX run is a new process.
# Prints the median and minimum of each side's runs and their ratios to
# Python's; writes OUT/run_ahead.json (OUT default /tmp). How
# bench/results/h200.json's run_ahead_session25 was measured.
#
#     MIX_ENV=test mix run bench/run_ahead.exs [gpu|cpu] [counts, default 0,32,256]
#
# Python comes from BENCH_PYTHON (default python3) and must import mlx.

{device, counts} =
  case System.argv() do
    [] -> {:gpu, [0, 32, 256]}
    [d] -> {String.to_atom(d), [0, 32, 256]}
    [d, c] -> {String.to_atom(d), c |> String.split(",") |> Enum.map(&String.to_integer/1)}
  end

rounds = String.to_integer(System.get_env("ROUNDS", "40"))
per = 5
backend = {EMLX.Backend, device: device}
queues = Map.new(counts, fn n -> {n, EMLX.CommandQueue.new!(device, run_ahead: n)} end)

emlx_run = fn queue ->
  Task.async(fn ->
    EMLX.CommandQueue.with_queue(queue, fn ->
      x = Nx.iota({4}, type: :f32, backend: backend) |> EMLX.eval()
      b = Nx.tensor([1.0, 1.0, 1.0, 1.0], backend: backend) |> EMLX.eval()
      t = System.monotonic_time(:microsecond)
      acc = Enum.reduce(1..10_000, x, fn _, acc -> Nx.add(acc, b) end)
      [10_000.0 | _] = Nx.to_flat_list(acc)
      System.monotonic_time(:microsecond) - t
    end)
  end)
  |> Task.await(60_000)
end

Code.require_file("python_loop.exs", __DIR__)
python_run = BenchPythonLoop.start(System.get_env("BENCH_PYTHON", "python3"), device)

# warm-up
Enum.each(counts, &emlx_run.(queues[&1]))
python_run.(2)

runs =
  Enum.reduce(1..rounds, %{}, fn round, acc ->
    order = if rem(round, 2) == 0, do: [:python | counts], else: counts ++ [:python]

    Enum.reduce(order, acc, fn side, acc ->
      times =
        if side == :python,
          do: python_run.(per),
          else: for(_ <- 1..per, do: emlx_run.(queues[side]))

      Map.update(acc, side, times, &(&1 ++ times))
    end)
  end)

median = fn l -> l |> Enum.sort() |> Enum.at(div(length(l), 2)) end
{py_median, py_min} = {median.(runs[:python]), Enum.min(runs[:python])}

summary =
  for side <- [:python | counts] do
    l = runs[side]
    {m, mn} = {median.(l), Enum.min(l)}
    name = if side == :python, do: "Python MLX", else: "run_ahead #{side}"

    IO.puts(
      "#{String.pad_trailing(name, 16)} median #{m / 1000} ms, min #{mn / 1000} ms " <>
        "(ratio to Python: #{Float.round(m / py_median, 2)} median, #{Float.round(mn / py_min, 2)} min; #{length(l)} runs)"
    )

    {to_string(side), %{median_us: m, min_us: mn, runs_us: l}}
  end

File.write!(
  Path.join(System.get_env("OUT", "/tmp"), "run_ahead.json"),
  JSON.encode!(Map.new(summary))
)
