defmodule EMLX.CommandQueueTest do
  use EMLX.Case, async: true

  alias EMLX.CommandQueue

  test "new/1, new!/1 and synchronize/1" do
    dev = device()
    assert {:ok, %CommandQueue{device: ^dev, ref: ref}} = CommandQueue.new(dev)
    assert is_reference(ref)
    q = CommandQueue.new!(device())
    assert CommandQueue.synchronize(q) == :ok
  end

  test "the GPU is refused clearly on a CPU-only build (and works on a CUDA build)" do
    if EMLX.NIF.device_available(:gpu) do
      assert {:ok, %CommandQueue{device: :gpu}} = CommandQueue.new(:gpu)
    else
      assert {:error, reason} = CommandQueue.new(:gpu)
      assert to_string(reason) =~ "GPU"
      assert_raise EMLX.NIFError, ~r/gpu command queue/, fn -> CommandQueue.new!(:gpu) end

      assert_raise ArgumentError, ~r/no :gpu device/, fn ->
        Nx.tensor([1, 2], backend: {EMLX.Backend, device: :gpu})
      end
    end
  end

  test "with_queue/2 binds the queue, nests, and restores" do
    q1 = CommandQueue.new!(device())
    q2 = CommandQueue.new!(device())
    default = EMLX.Application.default_worker(device())

    assert EMLX.resolve_worker(device()) == default

    CommandQueue.with_queue(q1, fn ->
      assert EMLX.resolve_worker(device()) == q1.ref
      t = emlx([1, 2, 3])
      assert t.data.queue == q1.ref

      CommandQueue.with_queue(q2, fn ->
        assert EMLX.resolve_worker(device()) == q2.ref
        # a tensor from q1 used on q2 is evaluated on q1 first
        assert Nx.to_list(Nx.add(t, 1)) == [2, 3, 4]
      end)

      assert EMLX.resolve_worker(device()) == q1.ref
    end)

    assert Process.get(:emlx_command_queue) == nil
  end

  test "with_queue/2 restores the binding when the function raises" do
    q = CommandQueue.new!(device())
    assert_raise RuntimeError, fn -> CommandQueue.with_queue(q, fn -> raise "boom" end) end
    assert Process.get(:emlx_command_queue) == nil
  end

  test "default workers live in :persistent_term and start/2 is idempotent" do
    ref = :persistent_term.get({EMLX, :default_worker, device()})
    assert is_reference(ref)
    EMLX.Application.start(:normal, []) |> then(fn _ -> :ok end)
    assert :persistent_term.get({EMLX, :default_worker, device()}) == ref
  end

  test "cross-device settings fall back to the device's default queue" do
    dev = device()
    other = if dev == :cpu, do: :gpu, else: :cpu
    q = CommandQueue.new!(dev)

    # bind a queue tagged for another device: a tensor of the test device falls back to the default
    Process.put(:emlx_command_queue, {q.ref, other})

    try do
      assert EMLX.resolve_worker(dev) == EMLX.Application.default_worker(dev)
      Application.put_env(:emlx, :cross_device_promotion, true)
      assert EMLX.resolve_worker(dev) == q.ref
    after
      Application.delete_env(:emlx, :cross_device_promotion)
      Process.delete(:emlx_command_queue)
    end
  end

  test "64 processes, each on its own queue, get correct results" do
    results =
      on_own_queues(64, fn i ->
        a = Nx.iota({16, 16}, type: :f32, backend: EMLX.Backend) |> Nx.add(i)
        b = Nx.dot(a, Nx.eye(16, backend: EMLX.Backend))
        Nx.sum(b) |> Nx.to_number()
      end)

    for {{_ref, sum}, i} <- Enum.with_index(results, 1) do
      assert sum == Enum.sum(0..255) + 256 * i
    end

    assert results |> Enum.map(&elem(&1, 0)) |> Enum.uniq() |> length() == 64
  end

  # (the wait is not a speed test: on a GPU host whose kernel cache is
  # cold, with the suite's other parts side by side, the first of these
  # took more than Task's default 5 s)
  test "64 processes sharing the default queue get correct results" do
    1..64
    |> Task.async_stream(fn i -> Nx.to_number(Nx.sum(Nx.multiply(emlx([1, 2, 3]), i))) end,
      max_concurrency: 64,
      timeout: 60_000
    )
    |> Enum.with_index(1)
    |> Enum.each(fn {{:ok, v}, i} -> assert v == 6 * i end)
  end

  test "a queue dropped by its owner keeps its arrays usable" do
    t =
      Task.async(fn ->
        q = CommandQueue.new!(device())
        CommandQueue.with_queue(q, fn -> emlx([1.0, 2.0]) |> Nx.multiply(2) end)
      end)
      |> Task.await(60_000)

    :erlang.garbage_collect()
    assert Nx.to_list(t) == [2.0, 4.0]
  end
end
