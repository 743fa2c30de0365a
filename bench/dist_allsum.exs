# One rank of the all_sum bandwidth bench (bench/dist_nccl.sh starts two,
# each with its own CUDA_VISIBLE_DEVICES): EMLX.Distributed over NCCL, an
# all_sum of a GiB-sized bf16 tensor on :gpu, timed call by call (each
# eager call returns once its result is computed).
#
#     RANK=r PORT=p MIB=1024 ITERS=20 mix run bench/dist_allsum.exs
rank = String.to_integer(System.fetch_env!("RANK"))
port = String.to_integer(System.fetch_env!("PORT"))
mib = String.to_integer(System.get_env("MIB", "1024"))
iters = String.to_integer(System.get_env("ITERS", "20"))
# IMPL=emlx_nocheck: init(check_shapes: false), no type-and-shape exchange a call
impl = System.get_env("IMPL", "emlx")
# READ=each (default): each result's last element is read back and checked
# between calls, outside the timing; READ=last: only the last result is
# (as NCCL's own tests time back-to-back calls and check apart)
read_each = System.get_env("READ", "each") == "each"
# TIMELINE=path: each call's start and end (host clock, ns) written to
# path.RANK, one "start end" line a call, to line the ranks up afterwards
timeline = System.get_env("TIMELINE")
# BACKEND=ring: MLX's ring over TCP on :cpu instead (to try the bench on a
# machine without GPUs, with a small MIB)
{backend, device} = if System.get_env("BACKEND") == "ring", do: {:ring, :cpu}, else: {:nccl, :gpu}
# SYNC=ms: each timed call starts at one host-clock instant on both ranks,
# one every ms (rank 0 picks the first after the warm-up and hands it over
# in a file), so neither rank's own work between calls (the read-back)
# shows up as waiting in the other's call; bench/dist_allsum.py does the same
sync_ms = System.get_env("SYNC")
sync_file = "/tmp/emlx-dist-sync-#{port}"
# BATCH=n: each timed call is one program of n all_sums of the tensor
# (compiler: EMLX), evaluated together, so the collectives run back to back
# on the device as NCCL's own tests time them; the time reported is per
# all_sum (bench/dist_allsum.py does the same)
batch = String.to_integer(System.get_env("BATCH", "1"))
if rank == 0, do: File.rm(sync_file)

hosts = ["127.0.0.1:#{port}", "127.0.0.1:#{port + 1}"]

%{size: size} =
  EMLX.Distributed.init(
    backend: backend,
    rank: rank,
    hosts: hosts,
    timeout: 300_000,
    check_shapes: impl != "emlx_nocheck"
  )

n = div(mib * 1024 * 1024, 2)
# a materialized tensor (a broadcast would be copied by each all_sum)
x =
  Nx.iota({n}, type: :bf16, backend: {EMLX.Backend, device: device})
  |> Nx.multiply(0)
  |> Nx.add(rank + 1)

step =
  if batch == 1 do
    fn -> [EMLX.Distributed.all_sum(x)] end
  else
    program =
      Nx.Defn.jit(
        fn x -> List.to_tuple(for _ <- 1..batch, do: EMLX.Distributed.all_sum(x)) end,
        compiler: EMLX
      )

    fn -> program.(x) |> EMLX.eval() |> Tuple.to_list() end
  end

for _ <- 1..3, do: step.() |> Enum.each(&Nx.backend_deallocate/1)
want = Enum.sum(1..size)

slot_start =
  if sync_ms do
    base =
      if rank == 0 do
        base = :os.system_time(:nanosecond) + 500_000_000
        File.write!(sync_file <> ".tmp", Integer.to_string(base))
        File.rename!(sync_file <> ".tmp", sync_file)
        base
      else
        Stream.repeatedly(fn -> File.read(sync_file) end)
        |> Enum.find_value(fn
          {:ok, text} ->
            String.to_integer(text)

          _ ->
            Process.sleep(1)
            nil
        end)
      end

    period = String.to_integer(sync_ms) * 1_000_000

    # sleeps to 2 ms before the instant, then spins to it
    fn i ->
      target = base + (i - 1) * period
      ms = div(target - :os.system_time(:nanosecond), 1_000_000) - 2
      if ms > 0, do: Process.sleep(ms)
      spin = fn spin -> if :os.system_time(:nanosecond) < target, do: spin.(spin) end
      spin.(spin)
    end
  else
    fn _ -> :ok end
  end

calls =
  for i <- 1..iters do
    slot_start.(i)
    w0 = :os.system_time(:nanosecond)
    t0 = System.monotonic_time(:microsecond)
    ys = step.()
    t = System.monotonic_time(:microsecond) - t0
    w1 = :os.system_time(:nanosecond)

    if read_each or i == iters do
      # the sum is exact in bf16 for these small integers
      last = List.last(ys)[n - 1]
      true = Nx.to_number(last) == want
      Nx.backend_deallocate(last)
    end

    # freed now, as Python's `del y` frees it: the next result reuses its buffer
    Enum.each(ys, &Nx.backend_deallocate/1)
    {t / 1.0e6 / batch, "#{w0} #{w1}\n"}
  end

times = Enum.map(calls, &elem(&1, 0))
if timeline, do: File.write!("#{timeline}.#{rank}", Enum.map(calls, &elem(&1, 1)))

sorted = Enum.sort(times)
median = Enum.at(sorted, div(iters, 2))
bytes = n * 2
# NCCL's bus bandwidth of an all-reduce: algorithm bandwidth times 2(n-1)/n
busbw = bytes / median * 2 * (size - 1) / size / 1.0e9

IO.puts(
  "DIST_RESULT " <>
    JSON.encode!(%{
      impl: impl,
      read: if(read_each, do: "each", else: "last"),
      sync_ms: sync_ms && String.to_integer(sync_ms),
      batch: batch,
      rank: rank,
      size: size,
      bytes: bytes,
      median_s: median,
      min_s: hd(sorted),
      busbw_gbs: busbw
    })
)
