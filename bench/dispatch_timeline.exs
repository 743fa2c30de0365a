# Where a dispatch-bound loop's time goes: 10,000 chained Nx.add on f32[4]
# and a read, LOOPS times (default 30, after 10 to warm up). For each loop
# it prints the posting (until the last Nx.add returns), the eval (the
# read), and, from /proc/self/task/*/schedstat (Linux), each thread
# group's time on a CPU, its time waiting for one, and its context
# switches: the queue's worker thread (`emlx_gpu`/`emlx_cpu`; MLX's CPU
# stream thread takes the name too), the BEAM's schedulers and its aux
# thread. A worker spins before it sleeps and so do the schedulers, so
# their time on a CPU bounds their work from above. Rows are sorted by
# the loop's total. How bench/results/h200.json's timeline_session29 was
# measured.
#
#     MIX_ENV=test mix run bench/dispatch_timeline.exs [gpu|cpu]

device =
  case System.argv() do
    [d] -> String.to_atom(d)
    _ -> :gpu
  end

loops = String.to_integer(System.get_env("LOOPS", "30"))
backend = {EMLX.Backend, device: device}
x = Nx.iota({4}, type: :f32, backend: backend) |> EMLX.eval()
b = Nx.tensor([1.0, 1.0, 1.0, 1.0], backend: backend) |> EMLX.eval()

group = fn comm ->
  cond do
    comm in ["emlx_gpu", "emlx_cpu"] -> :worker
    String.ends_with?(comm, "_scheduler") -> :schedulers
    String.ends_with?(comm, "_aux") -> :aux
    true -> :other
  end
end

# {group, on-CPU ns, run-queue wait ns, context switches} per thread
threads = fn ->
  for tid <- File.ls!("/proc/self/task"),
      {:ok, comm} <- [File.read("/proc/self/task/#{tid}/comm")],
      {:ok, stat} <- [File.read("/proc/self/task/#{tid}/schedstat")],
      into: %{} do
    [run, wait, switches] = stat |> String.split() |> Enum.map(&String.to_integer/1)
    {tid, {group.(String.trim(comm)), run, wait, switches}}
  end
end

# per group: {on-CPU µs, waiting µs, context switches} between two snapshots
delta = fn before, later ->
  Enum.reduce(later, %{}, fn {tid, {g, r, w, s}}, acc ->
    {_, r0, w0, s0} = Map.get(before, tid, {g, 0, 0, 0})
    add = {div(r - r0, 1000), div(w - w0, 1000), s - s0}

    Map.update(acc, g, add, fn {a, b, c} ->
      {a + elem(add, 0), b + elem(add, 1), c + elem(add, 2)}
    end)
  end)
end

loop = fn ->
  t0 = System.monotonic_time(:microsecond)
  acc = Enum.reduce(1..10_000, x, fn _, acc -> Nx.add(acc, b) end)
  t1 = System.monotonic_time(:microsecond)
  [10_000.0 | _] = Nx.to_flat_list(acc)
  {t1 - t0, System.monotonic_time(:microsecond) - t1}
end

for _ <- 1..10, do: loop.()

rows =
  for _ <- 1..loops do
    before = threads.()
    {post, eval} = loop.()
    d = delta.(before, threads.())
    {post + eval, post, eval, d[:worker], d[:schedulers], d[:aux]}
  end

IO.puts(
  "#{device}: {total µs, posting µs, eval µs, worker, schedulers, aux}, " <>
    "each thread group {on-CPU µs, waiting for a CPU µs, context switches}:"
)

for row <- Enum.sort(rows), do: IO.puts("  " <> inspect(row))
