defmodule EMLX.NIFTest do
  @moduledoc "Bad input raises a clear exception and the VM lives."
  use EMLX.Case, async: true

  alias EMLX.{NIF, Worker}

  defp queue, do: EMLX.Application.default_worker(device())

  test "the op table is exposed" do
    ops = NIF.op_list()
    assert {:add, ~c"aa"} in ops
    assert length(ops) > 80
    # EMLX.Ops reads the same table at compile time
    assert ops == Enum.map(EMLX.Ops.all(), fn {name, _, sig, _} -> {name, ~c"#{sig}"} end)
    # the MLX the build used: the pinned wheel, or a source build's tree
    # (an MLX_DIR install has no known version)
    with version when version != "custom" <- EMLX.LibMLX.ensure!().version,
         do: assert(NIF.mlx_version() == String.to_charlist(version))

    # a failed load names the library and the reason (here: it is loaded already)
    assert {:error, message} = NIF.__load__()

    assert to_string(message) =~
             ~r"could not load its NIF library /.*/priv/libemlx\.so \(reload\)"
  end

  test "pad and window values must be one element (an empty one faulted the GPU)" do
    {_, x} = EMLX.Backend.from_nx(emlx([[1, 2], [3, 4]], type: :s8))
    empty = NIF.op(queue(), :full, [0.0, [3, 0], {:f, 32}], nil)
    {_, pair} = EMLX.Backend.from_nx(emlx([0.0, 1.0]))

    for value <- [empty, pair] do
      assert_raise ArgumentError, ~r/exactly one element/, fn ->
        ref = NIF.op(queue(), :pad, [x, value, [0, 2], [3, 3], [2, 3]], nil)
        {device(), ref} |> EMLX.Backend.to_nx() |> Nx.to_list()
      end
    end
  end

  test "MLX's BLAS and LAPACK calls go to OpenBLAS where it is installed" do
    maps = File.read!("/proc/self/maps")
    dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"]
    installed? = Enum.any?(dirs, &File.exists?(Path.join(&1, "libopenblas.so.0")))

    if installed? and System.get_env("EMLX_BLAS") != "bundled" do
      assert maps =~ "libopenblas"
    else
      assert maps =~ "libblas-"
    end
  end

  test "wrong terms raise ArgumentError in the NIF" do
    {_, a} = EMLX.Backend.from_nx(emlx([1, 2, 3]))

    assert_raise ArgumentError, ~r/unknown EMLX op/, fn -> NIF.op(queue(), :nope, [a], nil) end
    assert_raise ArgumentError, ~r/expects 2 arguments/, fn -> NIF.op(queue(), :add, [a], nil) end

    assert_raise ArgumentError, ~r/EMLX array reference/, fn ->
      NIF.op(queue(), :add, [a, 1], nil)
    end

    assert_raise ArgumentError, ~r/command queue/, fn -> NIF.op(make_ref(), :add, [a, a], nil) end
    assert_raise ArgumentError, ~r/output type/, fn -> NIF.op(queue(), :add, [a, a], {:f, 8}) end

    assert_raise ArgumentError, ~r/list of 32-bit integers/, fn ->
      NIF.op(queue(), :reshape, [a, [:x]], nil)
    end

    assert_raise ArgumentError, ~r/boolean/, fn ->
      NIF.op(queue(), :all, [a, [0], :maybe], nil)
    end

    assert_raise ArgumentError, ~r/device/, fn -> NIF.queue_new(:tpu, -1) end

    assert_raise ArgumentError, ~r/does not match/, fn ->
      NIF.from_binary(queue(), <<1, 2, 3>>, {2}, {:s, 32})
    end

    assert_raise ArgumentError, ~r/shape/, fn ->
      NIF.from_binary(queue(), <<>>, {-1}, {:s, 32})
    end

    assert_raise ArgumentError, ~r/type/, fn -> NIF.from_binary(queue(), <<0>>, {1}, {:u, 4}) end
    assert_raise ArgumentError, ~r/limit/, fn -> NIF.to_binary(queue(), a, -1) end
    assert_raise ArgumentError, ~r/command queue/, fn -> NIF.to_binary(make_ref(), a, 0) end

    assert_raise ArgumentError, ~r/pointer mode/, fn ->
      NIF.to_pointer(queue(), a, :bad, 0o600)
    end

    assert_raise ArgumentError, ~r/permissions/, fn ->
      NIF.to_pointer(queue(), a, :local, 0o1777)
    end

    assert_raise ArgumentError, ~r/command queue/, fn ->
      NIF.to_pointer(make_ref(), a, :local, 0o600)
    end

    assert_raise ArgumentError, fn -> NIF.array_info(:not_an_array) end
  end

  test "MLX's own errors become EMLX.NIFError with MLX's message, at the first read" do
    a = EMLX.Backend.from_nx(emlx([1, 2, 3]))
    # ops return at once; the worker's error is raised where the array is read
    bad = EMLX.reshape(a, {2, 2})
    assert_raise EMLX.NIFError, ~r/reshape/i, fn -> EMLX.eval(bad) end
    assert_raise EMLX.NIFError, ~r/reshape/i, fn -> EMLX.to_blob(bad) end
    assert_raise EMLX.NIFError, ~r/reshape/i, fn -> EMLX.shape(bad) end
    # and so does every array computed from it
    assert_raise EMLX.NIFError, ~r/reshape/i, fn -> EMLX.add(bad, bad) |> EMLX.to_blob() end
    assert_raise EMLX.NIFError, fn -> EMLX.transpose(a, [3]) |> EMLX.eval() end
    # and the queue keeps working
    assert EMLX.to_nx(EMLX.add(a, a)) |> Nx.to_list() == [2, 4, 6]
  end

  test "a deallocated tensor raises instead of crashing" do
    t = emlx([1, 2, 3])
    assert Nx.backend_deallocate(t) == :ok
    assert_raise ArgumentError, ~r/deallocated/, fn -> Nx.add(t, 1) end
    assert_raise ArgumentError, ~r/deallocated/, fn -> Nx.to_binary(t) end
    assert inspect(t) =~ "deallocated"
  end

  test "shape checks happen before MLX sees the call" do
    assert_raise ArgumentError, fn -> Nx.reshape(emlx([1, 2, 3]), {2, 2}) end
    assert_raise ArgumentError, fn -> Nx.dot(emlx([1, 2, 3]), emlx([1, 2])) end
    assert_raise ArgumentError, fn -> Nx.sum(emlx([1, 2, 3]), axes: [4]) end
  end

  test "integer division by zero and INT_MIN / -1 do not trap" do
    a = emlx([7, -2_147_483_648, 5], type: :s32)
    b = emlx([0, -1, 0], type: :s32)
    assert Nx.to_list(Nx.quotient(a, b)) == [0, -2_147_483_648, 0]
    assert Nx.to_list(Nx.remainder(a, b)) == [7, 0, 5]
  end

  test "out-of-range indices are clamped, never read or written outside the tensor" do
    # (computed lazily: literal indices out of range raise as in Nx, see
    # EMLX.BoundsTest)
    lazy = &Nx.add(emlx(&1), 0)
    t = emlx([1, 2, 3])
    assert Nx.gather(t, lazy.([[5], [-3], [1]])) |> Nx.to_list() == [3, 1, 2]
    assert Nx.take(t, emlx([1_000_000, -1])) |> Nx.to_list() == [3, 1]
    assert Nx.indexed_add(t, lazy.([[9], [-9]]), emlx([10, 20])) |> Nx.to_list() == [21, 2, 13]
  end

  test "a process killed while its job runs leaves the queue usable" do
    q = EMLX.CommandQueue.new!(device())

    pid =
      spawn(fn ->
        EMLX.CommandQueue.with_queue(q, fn ->
          a = Nx.iota({512, 512}, type: :f32, backend: EMLX.Backend)

          Enum.reduce(1..20, a, fn _, acc -> Nx.dot(acc, a) |> Nx.divide(512) end)
          |> Nx.to_binary()
        end)
      end)

    Process.sleep(20)
    Process.exit(pid, :kill)

    EMLX.CommandQueue.with_queue(q, fn ->
      assert Nx.to_list(Nx.add(emlx([1, 2]), 1)) == [2, 3]
    end)
  end

  # A reply is polled for up to the queue's window (100 us on a CPU queue,
  # 5 ms on a GPU queue of a host with 8 cores or more, for a few callers at
  # once; EMLX_REPLY_POLL_US), then comes as a message: which path a job
  # takes depends on its time, so both are checked for results and for
  # leaving nothing in the mailbox, not for which one was taken.
  test "replies are right whether polled for or sent as a message" do
    q = queue()
    %{data: %{ref: small}} = emlx([1.0, 2.0]) |> EMLX.eval()

    m =
      Nx.iota({1024, 1024}, type: :f32, backend: {EMLX.Backend, device: device()})
      |> Nx.divide(1.0e6)

    %{data: %{ref: big}} = Enum.reduce(1..4, m, fn _, acc -> Nx.dot(acc, m) end)

    for _ <- 1..20 do
      assert NIF.eval(q, [small]) |> Worker.await() == :ok

      assert NIF.to_binary(q, small, 8) |> Worker.await() ==
               <<1.0::float-32-native, 2.0::float-32-native>>
    end

    assert NIF.eval(q, [big]) |> Worker.await() == :ok
    assert byte_size(NIF.to_binary(q, big, 16) |> Worker.await()) == 16
    assert NIF.queue_sync(q) |> Worker.await() == :ok
    refute_received _
  end

  # Only a few callers at once get the long window (one for each 8 cores);
  # the rest poll 100 us. Many callers at once all get their own replies.
  test "many callers polling at once each get their own reply" do
    q = queue()

    tasks =
      for k <- 1..24 do
        Task.async(fn ->
          for i <- 1..10 do
            m = Nx.iota({256, 256}, type: :f32, backend: {EMLX.Backend, device: device()})
            %{data: %{ref: r}} = t = Nx.add(Nx.dot(Nx.divide(m, 65_536.0), m), k * 100 + i)
            assert NIF.eval(q, [r]) |> Worker.await() == :ok
            Nx.to_number(t[0][0]) - (k * 100 + i)
          end
        end)
      end

    # row 0 of m/65536 . m: the sum of j^2/256 for j < 256, exact in f32
    for values <- Task.await_many(tasks, 60_000), v <- values, do: assert(v == 21_717.5)
    assert NIF.queue_sync(q) |> Worker.await() == :ok
    refute_received _
  end

  test "a process gone while polling leaves no job or message behind" do
    q = queue()

    m =
      Nx.iota({1024, 1024}, type: :f32, backend: {EMLX.Backend, device: device()})
      |> Nx.divide(1.0e6)

    for _ <- 1..20 do
      %{data: %{ref: r}} = Nx.dot(m, m)
      pid = spawn(fn -> NIF.eval(q, [r]) end)
      Process.exit(pid, :kill)
    end

    assert NIF.queue_sync(q) |> Worker.await() == :ok
    assert Nx.to_list(Nx.add(emlx([1, 2]), 1)) == [2, 3]
  end

  test "queue_drain waits for the jobs posted before it, queue_idle tells when all are done" do
    # a queue of its own: the default one is shared with the other async tests
    %EMLX.CommandQueue{ref: q} = EMLX.CommandQueue.new!(device())

    x = Worker.from_binary(q, <<1.0::float-32-native, 2.0::float-32-native>>, {2}, {:f, 32})

    last = Enum.reduce(1..500, x, fn _, acc -> Worker.run_op(q, :add, [acc, x], {:f, 32}) end)
    assert NIF.queue_drain(q) |> Worker.await() == :ok
    # every op has run: the last result's metadata is there without waiting
    assert {{2}, {:f, 32}, ^q} = NIF.array_info(last)
    # the drain job itself may still be counted for a moment after its reply
    assert Enum.any?(1..1000, fn _ -> NIF.queue_idle(q) or (Process.sleep(1) && false) end)

    assert NIF.to_binary(q, last, 8) |> Worker.await() ==
             <<501.0::float-32-native, 1002.0::float-32-native>>
  end

  test "backpressure: past the depth the caller waits for the low mark, not for an empty queue" do
    %EMLX.CommandQueue{ref: q} = EMLX.CommandQueue.new!(device())
    assert NIF.queue_wait_low(q) == :ok

    one = Worker.from_binary(q, <<1.0::float-32-native>>, {1}, {:f, 32})
    # the worker busy with a product while the ops queue up behind it
    # (about 0.1 s on a CPU, 20 ms on an H200 in full f32)
    size = if device() == :gpu, do: 8192, else: 2048
    m = Worker.run_op(q, :iota, [{size, size}, 0, {:f, 32}], nil)
    busy = NIF.eval(q, [Worker.run_op(q, :dot, [m, [1], [], m, [0], []], {:f, 32})])

    {waited, told} =
      Enum.reduce_while(1..50_000, {one, nil}, fn i, {acc, nil} ->
        case NIF.op(q, :add, [acc, one], {:f, 32}) do
          {:wait, r} -> {:halt, {{r, i}, NIF.queue_wait_low(q)}}
          r -> {:cont, {r, nil}}
        end
      end)

    assert {last, n} = waited, "the queue never got past the backpressure depth"
    # still deep (the worker has more than the low mark to run): a reference
    # and its message; or already at the mark
    case told do
      :ok -> :ok
      ref when is_reference(ref) -> assert_receive {^ref, :ok}, 10_000
    end

    assert Worker.await(busy) == :ok
    assert NIF.to_binary(q, last, 4) |> Worker.await() == <<(n + 1) * 1.0::float-32-native>>
  end

  test "backpressure: processes posting to one queue all get through" do
    %EMLX.CommandQueue{ref: q} = EMLX.CommandQueue.new!(device())
    one = Worker.from_binary(q, <<1.0::float-32-native>>, {1}, {:f, 32})

    results =
      1..4
      |> Enum.map(fn _ ->
        Task.async(fn ->
          last =
            Enum.reduce(1..3_000, one, fn _, acc ->
              Worker.run_op(q, :add, [acc, one], {:f, 32})
            end)

          NIF.to_binary(q, last, 4) |> Worker.await()
        end)
      end)
      |> Task.await_many(60_000)

    assert results == List.duplicate(<<3_001.0::float-32-native>>, 4)
  end

  test "from_binary: a small binary for a CPU queue is an array at once; others are posted, pending" do
    %EMLX.CommandQueue{ref: q} = EMLX.CommandQueue.new!(device())
    one = Worker.from_binary(q, <<1.0::float-32-native>>, {1}, {:f, 32})
    # made on the calling scheduler: no job, nothing to wait for
    if device() == :cpu, do: assert(NIF.array_available(one))

    # past the backpressure depth of queued ops, a binary over 64 KiB (posted:
    # its array comes back pending, or after a wait for the queue to drain)
    busy =
      Enum.reduce(1..2_100, one, fn _, acc -> Worker.run_op(q, :add, [acc, one], {:f, 32}) end)

    n = 16_400
    bin = for i <- 1..n, into: <<>>, do: <<i * 1.0::float-32-native>>
    big = Worker.from_binary(q, bin, {n}, {:f, 32})
    doubled = Worker.run_op(q, :add, [big, big], {:f, 32})

    assert NIF.to_binary(q, busy, 4) |> Worker.await() == <<2_101.0::float-32-native>>
    assert NIF.to_binary(q, big, n * 4) |> Worker.await() == bin

    assert NIF.to_binary(q, doubled, 8) |> Worker.await() ==
             <<2.0::float-32-native, 4.0::float-32-native>>
  end

  test "array_available: false until computed, then true; false once deallocated" do
    %EMLX.CommandQueue{ref: q} = EMLX.CommandQueue.new!(device())
    x = Worker.from_binary(q, <<1.0::float-32-native>>, {1}, {:f, 32})
    y = Worker.run_op(q, :add, [x, x], {:f, 32})
    assert NIF.queue_drain(q) |> Worker.await() == :ok
    # made, not evaluated (MLX is lazy)
    refute NIF.array_available(y)
    assert NIF.eval(q, [y]) |> Worker.await() == :ok
    assert NIF.array_available(y)

    # a tensor of another queue, computed: used there with no evaluation first
    t =
      Nx.tensor([1.0, 2.0], backend: {EMLX.Backend, device: device()}) |> Nx.add(1) |> EMLX.eval()

    assert NIF.array_available(t.data.ref)
    other = EMLX.CommandQueue.new!(device())

    assert Nx.to_list(EMLX.CommandQueue.with_queue(other, fn -> Nx.multiply(t, 2) end)) == [
             4.0,
             6.0
           ]

    NIF.deallocate(y)
    refute NIF.array_available(y)
  end
end
