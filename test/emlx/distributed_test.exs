defmodule EMLX.DistributedTest do
  # EMLX.Distributed over MLX's ring backend, between two OS processes
  # (peer nodes) on 127.0.0.1.
  use ExUnit.Case, async: false

  alias EMLX.{DistPeer, Distributed}

  @moduletag timeout: 300_000

  setup_all do
    peers = DistPeer.start(2)
    on_exit(fn -> Enum.each(peers, &:peer.stop/1) end)
    port = 41_000 + :rand.uniform(20_000)
    joined = DistPeer.on_all(peers, :join, [2, port])
    %{peers: peers, joined: joined}
  end

  test "init/1 gives each process its rank in a group of two", %{joined: joined} do
    assert joined == [%{rank: 0, size: 2}, %{rank: 1, size: 2}]
  end

  test "collectives eagerly, inside defn on the evaluator and under compiler: EMLX", %{
    peers: peers
  } do
    DistPeer.assert_collectives(peers, :cpu)
  end

  test "send and recv; a recv of the wrong shape raises and the pair stays in step", %{
    peers: peers
  } do
    assert [:ok, {[[0, 1, 2], [3, 4, 5]], wrong, [7.0, 8.0]}] = DistPeer.on_all(peers, :send_recv)
    assert wrong =~ "rank 0 sent type code"
  end

  test "ranks that bring different shapes raise ArgumentError on each", %{peers: peers} do
    DistPeer.assert_mismatch_raises(peers)
  end

  test "without the side channel (hosts by name) the check is a collective, and still raises" do
    peers = DistPeer.start(2)

    try do
      port = 41_000 + :rand.uniform(20_000)
      assert [%{rank: 0}, %{rank: 1}] = DistPeer.on_all(peers, :join_named, [port])
      DistPeer.assert_mismatch_raises(peers)
      DistPeer.assert_collectives(peers, :cpu)
    after
      Enum.each(peers, &:peer.stop/1)
    end
  end

  test "an MLP trained by two processes on halves, gradients all_summed, equals one on the whole batch",
       %{peers: peers} do
    DistPeer.assert_trained_like_whole(peers, 15, :cpu)
  end

  test "a peer that is gone: the collective raises EMLX.NIFError, and the VM stays up" do
    # (the shape check's channel notices first; without it, the ring does)
    DistPeer.assert_gone_peer_raises(:ring, ~r"rank 1 is gone|connection to a peer was lost")
  end

  test "Nx.Serving across two BEAM nodes: callers on A are served by B's EMLX" do
    [{pa, a}, {pb, b}] = DistPeer.start(2, named: true)

    try do
      name = :emlx_remote_serving
      assert :ok = :peer.call(pb, DistPeer, :serve, [name])

      inputs =
        for i <- 1..6,
            do: Nx.tensor(Enum.map(0..4, &(0.3 * i * &1)), type: :f32, backend: Nx.BinaryBackend)

      results = :peer.call(pa, DistPeer, :call_remote, [b, name, inputs], 120_000)

      for {x, {out, served_by}} <- Enum.zip(inputs, results) do
        assert served_by == b
        refute served_by == a
        want = DistPeer.serving_fun(Nx.backend_copy(x, EMLX.Backend))
        assert_in_delta_list(Nx.to_list(out), Nx.to_list(want))
      end
    after
      Enum.each([pa, pb], &:peer.stop/1)
    end
  end

  test "an EMLX tensor that comes from another node raises a clear ArgumentError" do
    [{peer, node}] = DistPeer.start(1, named: true)

    try do
      foreign = :peer.call(peer, Nx, :tensor, [[1.0, 2.0], [backend: EMLX.Backend]])

      for use <- [&Nx.to_binary/1, &Nx.add(&1, 1), &Nx.add(&1, &1)] do
        e = assert_raise ArgumentError, fn -> use.(foreign) end
        assert e.message =~ "this tensor was made on node #{node}"
      end
    after
      :peer.stop(peer)
    end
  end

  defp assert_in_delta_list(got, want) do
    assert length(got) == length(want)
    for {g, w} <- Enum.zip(got, want), do: assert_in_delta(g, w, 1.0e-6)
  end

  test "a rank that never joins: the call raises after the timeout, and the group is broken after" do
    [p0, p1] = peers = DistPeer.start(2)

    try do
      port = 41_000 + :rand.uniform(20_000)
      # (the timeout bounds the join too: 1.5 s was once too short for two
      # fresh peers to join on this 2-core VM under the suite's load)
      assert [%{rank: 0}, %{rank: 1}] = DistPeer.on_all(peers, :join, [2, port, 4_000])
      {first, second, other_work} = :peer.call(p0, DistPeer, :lone_sum, [0], 30_000)
      assert first =~ "all_sum did not finish within 4000 ms"
      assert second =~ "the group is broken: an earlier call all_sum did not finish"
      # the VM and EMLX's other queues go on
      assert other_work == 2.0
    after
      Enum.each([p0, p1], &:peer.stop/1)
    end
  end

  test "backend: :any and check_shapes: false: the ring, without the type-and-shape exchange" do
    peers = DistPeer.start(2)

    try do
      port = 41_000 + :rand.uniform(20_000)
      assert DistPeer.on_all(peers, :unchecked_sum, [port]) == [3.0, 3.0]
    after
      Enum.each(peers, &:peer.stop/1)
    end
  end

  test "without init/1 the functions raise" do
    refute Distributed.initialized?()

    assert_raise ArgumentError, ~r/not initialized/, fn ->
      Distributed.all_sum(Nx.tensor([1.0]))
    end

    assert_raise ArgumentError, ~r/not initialized/, fn -> Distributed.rank() end
  end
end
