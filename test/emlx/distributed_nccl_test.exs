defmodule EMLX.DistributedNCCLTest do
  # EMLX.Distributed over MLX's NCCL backend: two OS processes (peer nodes),
  # each with one GPU of its own. Needs a CUDA build and two GPUs, so it runs
  # only when asked (EMLX_TEST_NCCL=1, on the GPU host); CI has neither.
  use ExUnit.Case, async: false

  alias EMLX.DistPeer

  @moduletag :nccl
  @moduletag timeout: 600_000

  setup_all do
    peers = DistPeer.start(2, gpus: true)
    on_exit(fn -> Enum.each(peers, &:peer.stop/1) end)
    port = 41_000 + :rand.uniform(20_000)
    joined = DistPeer.on_all(peers, :join, [2, port, 300_000, :nccl], 300_000)
    %{peers: peers, joined: joined}
  end

  test "init/1 with backend: :nccl gives each process its rank in a group of two", %{
    joined: joined
  } do
    assert joined == [%{rank: 0, size: 2}, %{rank: 1, size: 2}]
  end

  test "collectives on :gpu: eagerly, on the evaluator, compiled and from Nx.BinaryBackend", %{
    peers: peers
  } do
    DistPeer.assert_collectives(peers, :gpu)
  end

  test "ranks that bring different shapes raise ArgumentError on each", %{peers: peers} do
    DistPeer.assert_mismatch_raises(peers)
  end

  test "the MLP trained on two GPUs, gradients all_summed by NCCL, equals one GPU on the whole batch",
       %{peers: peers} do
    DistPeer.assert_trained_like_whole(peers, 15, :gpu)
  end

  test "send and recv raise ArgumentError: MLX's NCCL backend has neither", %{peers: peers} do
    [p0 | _] = peers
    assert {:raised, ArgumentError, message} = :peer.call(p0, DistPeer, :run, [:send_one, [0]])
    assert message =~ "NCCL backend has no send or recv"
  end

  # The shape check's side channel (made at the group's first checked
  # collective): without it the check is a small NCCL collective, which
  # would wait for the missing rank instead.
  test "a peer that is gone: the next collective raises at the shape check, and the VM stays up" do
    # (the first collective makes the channel, so rank 1 takes part in it)
    DistPeer.assert_gone_peer_raises(:nccl, "rank 1 is gone", gpus: true, sum_first: true)
  end
end
