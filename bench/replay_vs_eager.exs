# Is the small-op gap MLX's work or EMLX's handoff? 10,000 chained Nx.add
# on f32[4] and a read, three ways in one VM: eager (an op job each, as the
# bench's dispatch row), the same adds as one `compiler: EMLX` program
# replayed without mx::compile (`fuse: false`: MLX builds and evaluates the
# same nodes on the worker, posted as one job), and that program fused;
# and Python MLX's eager loop (bench/run_ahead.py, a subprocess on the same
# device). ROUNDS rounds (default 8) of PER runs (default 15) of each, the
# order shuffled by round. Prints each side's median and minimum, and the
# program's split into its call and its read. How h200.json's
# replay_session30 was measured (there, Python ran in a process of its own
# before the VM).
#
#     MIX_ENV=test mix run bench/replay_vs_eager.exs [gpu|cpu]
#
# Python comes from BENCH_PYTHON (default python3) and must import mlx;
# BENCH_PYTHON=none leaves it out.

device =
  case System.argv() do
    [d] -> String.to_atom(d)
    _ -> :gpu
  end

rounds = String.to_integer(System.get_env("ROUNDS", "8"))
per = String.to_integer(System.get_env("PER", "15"))
backend = {EMLX.Backend, device: device}
x = Nx.iota({4}, type: :f32, backend: backend) |> EMLX.eval()
b = Nx.tensor([1.0, 1.0, 1.0, 1.0], backend: backend) |> EMLX.eval()
chain = fn x, b -> Enum.reduce(1..10_000, x, fn _, acc -> Nx.add(acc, b) end) end
unfused = Nx.Defn.jit(chain, compiler: EMLX, fuse: false)
fused = Nx.Defn.jit(chain, compiler: EMLX)
read = fn acc -> [10_000.0 | _] = Nx.to_flat_list(acc) end
timed = fn f -> elem(:timer.tc(fn -> read.(f.()) end), 0) end

Code.require_file("python_loop.exs", __DIR__)

python_runs =
  case System.get_env("BENCH_PYTHON", "python3") do
    "none" -> nil
    python -> BenchPythonLoop.start(python, device)
  end

sides =
  [
    eager: fn -> for _ <- 1..per, do: timed.(fn -> chain.(x, b) end) end,
    program: fn -> for _ <- 1..per, do: timed.(fn -> unfused.(x, b) end) end,
    fused: fn -> for _ <- 1..per, do: timed.(fn -> fused.(x, b) end) end
  ] ++ if(python_runs, do: [python: fn -> python_runs.(per) end], else: [])

for {_, run} <- sides, do: run.()

split =
  for _ <- 1..5 do
    {call, r} = :timer.tc(fn -> unfused.(x, b) end)
    {call, elem(:timer.tc(fn -> read.(r) end), 0)}
  end

times =
  Enum.reduce(1..rounds, %{}, fn _, acc ->
    Enum.reduce(Enum.shuffle(sides), acc, fn {name, run}, acc ->
      Map.update(acc, name, run.(), &(&1 ++ run.()))
    end)
  end)

median = fn l -> Enum.at(Enum.sort(l), div(length(l), 2)) end

IO.puts(
  "#{device}, 10,000 adds on f32[4] and a read; #{rounds} rounds of #{per} runs a side (µs):"
)

for {name, _} <- sides do
  ts = times[name]
  IO.puts("  #{name}: median #{median.(ts)}, min #{Enum.min(ts)}")
end

IO.puts("  program {call, read}: #{inspect(split)}")
