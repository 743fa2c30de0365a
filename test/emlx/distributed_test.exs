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
    want = [
      [3.0, 30.0, -1.0],
      [2.0, 20.0, 0.0],
      [1.0, 10.0, -1.0],
      [[1.0, 10.0, 0.0], [2.0, 20.0, -1.0]]
    ]

    for per_rank <- DistPeer.on_all(peers, :collectives), got <- per_rank, do: assert(got == want)
  end

  test "send and recv; a recv of the wrong shape raises and the pair stays in step", %{
    peers: peers
  } do
    assert [:ok, {[[0, 1, 2], [3, 4, 5]], wrong, [7.0, 8.0]}] = DistPeer.on_all(peers, :send_recv)
    assert wrong =~ "rank 0 sent type code"
  end

  test "ranks that bring different shapes raise ArgumentError on each", %{peers: peers} do
    for r <- DistPeer.on_all(peers, :mismatched) do
      assert {:raised, ArgumentError, message} = r
      assert message =~ "the ranks' tensors differ"
    end

    # the group still works
    assert DistPeer.on_all(peers, :sum_ranks) == [3.0, 3.0]
  end

  test "an MLP trained by two processes on halves, gradients all_summed, equals one on the whole batch",
       %{peers: peers} do
    steps = 15
    [w0, w1] = DistPeer.on_all(peers, :train, [steps])
    whole = DistPeer.train(nil, steps)

    for k <- [:w1, :b1, :w2, :b2] do
      assert Nx.to_binary(w0[k]) == Nx.to_binary(w1[k])
      assert Nx.all_close(w0[k], whole[k], atol: 1.0e-5, rtol: 1.0e-4) |> Nx.to_number() == 1
    end

    refute Nx.all_close(whole.w1, DistPeer.params().w1, atol: 1.0e-4) |> Nx.to_number() == 1
  end

  test "without init/1 the functions raise" do
    refute Distributed.initialized?()

    assert_raise ArgumentError, ~r/not initialized/, fn ->
      Distributed.all_sum(Nx.tensor([1.0]))
    end

    assert_raise ArgumentError, ~r/not initialized/, fn -> Distributed.rank() end
  end
end
