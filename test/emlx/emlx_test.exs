defmodule EMLXTest do
  use EMLX.Case, async: true
  doctest EMLX

  test "eval/1, to_blob/1,2 and item/1 on device refs" do
    ref = EMLX.Backend.from_nx(emlx([1.5, 2.5, 3.5]))
    assert {dev, r} = EMLX.eval(ref)
    assert dev == device()
    assert is_reference(r)

    assert EMLX.to_blob(ref) ==
             <<1.5::float-32-native, 2.5::float-32-native, 3.5::float-32-native>>

    assert EMLX.to_blob(ref, 1) == <<1.5::float-32-native>>
    assert EMLX.item(EMLX.sum(ref, [0], false)) == 7.5
    assert EMLX.shape(ref) == {3}
    assert EMLX.scalar_type(ref) == {:f, 32}
    assert EMLX.strides(ref) == {1}
  end

  test "eval/1 on a container evaluates every tensor, one round trip per queue" do
    q = EMLX.CommandQueue.new!(device())
    a = Nx.add(emlx([1, 2]), 1)
    b = EMLX.CommandQueue.with_queue(q, fn -> Nx.multiply(emlx([3.0]), 2) end)
    tree = {a, %{b: b, c: Nx.tensor(7, backend: Nx.BinaryBackend)}}
    pid = self()
    # (handlers run in the process that evaluates: only this test's evals count,
    # not those of the async tests running beside it)
    handler = fn _, _, meta, _ -> if self() == pid, do: send(pid, {:eval, meta.device}) end
    :telemetry.attach("eval-container-#{inspect(pid)}", [:emlx, :eval, :stop], handler, nil)

    try do
      assert EMLX.eval(tree) == tree
      assert_received {:eval, _}
      assert_received {:eval, _}
      refute_received {:eval, _}
    after
      :telemetry.detach("eval-container-#{inspect(pid)}")
    end

    assert {Nx.to_list(a), Nx.to_list(b)} == {[2, 3], [6.0]}
    assert EMLX.eval([a, b]) == [a, b]
  end

  test "async_eval/1 starts the work and returns; a read waits, and raises the work's error" do
    a = emlx([1.0, 2.0])
    b = Nx.multiply(Nx.add(a, 1), 3)
    tree = {b, %{c: Nx.exp(a)}, 7}
    assert EMLX.async_eval(tree) == tree
    assert EMLX.async_eval([b]) == [b]
    assert Nx.to_list(b) == [6.0, 9.0]

    q = emlx(Nx.iota({1, 1, 1, 2}, type: :f32))
    k = emlx(Nx.iota({1, 1, 2, 2}, type: :f32))
    bad = EMLX.Fast.scaled_dot_product_attention_cached(q, k, k, 1.0, 5)

    assert EMLX.async_eval(bad) == bad
    assert_raise ArgumentError, ~r/does not fit the cache/, fn -> Nx.to_list(bad) end

    # the same once the op has surely failed (the queue waited for): async_eval
    # still returns, and the read raises
    %{data: %{queue: queue}} =
      bad = EMLX.Fast.scaled_dot_product_attention_cached(q, k, k, 1.0, 5)

    assert EMLX.NIF.queue_sync(queue) |> EMLX.Worker.await() == :ok
    assert EMLX.async_eval([bad, a]) == [bad, a]
    assert_raise ArgumentError, ~r/does not fit the cache/, fn -> Nx.to_list(bad) end
  end

  # Each step is built on the previous one while that one may still be
  # computing (started by async_eval), as a decode loop builds its steps.
  test "steps built on async_eval'd steps, as a decode loop does, give the eager results" do
    x0 = Nx.iota({64, 64}, type: :f32) |> Nx.divide(4096)
    cache0 = Nx.broadcast(0.0, {8, 64})

    step = fn x, cache, i ->
      y = x |> Nx.multiply(1.01) |> Nx.add(Nx.sin(x)) |> Nx.divide(2)
      row = y |> Nx.sum(axes: [0]) |> Nx.reshape({1, 64})
      {y, Nx.put_slice(cache, [i, 0], row)}
    end

    want =
      Enum.reduce(0..7, {x0, cache0}, fn i, {x, c} -> step.(x, c, i) end)
      |> elem(1)

    {_, got} =
      Enum.reduce(0..7, EMLX.async_eval({emlx(x0), emlx(cache0)}), fn i, {x, c} ->
        EMLX.async_eval(step.(x, c, emlx(i)))
      end)

    assert Nx.all_close(to_bin(got), want, rtol: 1.0e-5) |> Nx.to_number() == 1
  end

  test "eval/1 on an Nx tensor returns it" do
    t = emlx([1, 2])
    assert EMLX.eval(t) == t
  end

  test "to_nx/1 and from_nx/1 round trip, with bool results as u8" do
    a = EMLX.Backend.from_nx(emlx([1, 2, 3]))
    b = EMLX.Backend.from_nx(emlx([3, 2, 1]))
    eq = EMLX.equal(a, b)
    assert EMLX.scalar_type(eq) == :bool
    t = EMLX.to_nx(eq)
    assert t.type == {:u, 8}
    assert Nx.to_list(t) == [0, 1, 0]
    assert Nx.to_list(EMLX.to_nx(EMLX.add(a, b))) == [4, 4, 4]
  end

  test "creation functions" do
    assert Nx.to_list(EMLX.to_nx(EMLX.full(3, {2}, {:s, 32}, device()))) == [3, 3]
    assert Nx.to_list(EMLX.to_nx(EMLX.ones({2}, {:f, 32}))) == [1.0, 1.0]
    assert Nx.to_list(EMLX.to_nx(EMLX.eye(2, 2, {:u, 8}))) == [[1, 0], [0, 1]]
    assert EMLX.item(EMLX.scalar_tensor(2.5, {:f, 64})) == 2.5
    ref = EMLX.from_blob(<<1::32-native, 2::32-native>>, {2}, {:s, 32})
    assert Nx.to_list(EMLX.to_nx(ref)) == [1, 2]
  end

  test "memory functions return what they document" do
    assert EMLX.reset_peak_memory() == :ok
    assert EMLX.clear_cache() == :ok
    prev = EMLX.set_cache_limit(1_000_000)
    assert is_integer(prev)
    assert EMLX.set_cache_limit(prev) == 1_000_000
    prev = EMLX.set_memory_limit(8_000_000_000)
    assert EMLX.set_memory_limit(prev) == 8_000_000_000
  end

  test "default_device/0 honours the application environment" do
    assert EMLX.default_device() == device()
  end
end
