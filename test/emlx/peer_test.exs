defmodule EMLX.PeerTest do
  # Issue 14 (Nx's distributed serving tests): a node that loads EMLX
  # without starting its application (a peer running part of a distributed
  # Nx.Serving) can still use EMLX.Backend: the application starts at first
  # use. The peer talks over standard I/O, so no distribution is needed.
  use ExUnit.Case, async: true

  @moduletag timeout: 120_000

  test "EMLX.Backend on a peer node where :emlx was never started" do
    {:ok, peer, _node} = :peer.start_link(%{connection: :standard_io})

    try do
      :ok = :peer.call(peer, :code, :add_paths, [:code.get_path()])

      assert :peer.call(peer, Application, :started_applications, []) |> List.keyfind(:emlx, 0) ==
               nil

      {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:nx])

      code = "t = Nx.tensor([1.0, 2.0], backend: EMLX.Backend); Nx.to_list(Nx.multiply(t, 3))"
      assert {[3.0, 6.0], _} = :peer.call(peer, Code, :eval_string, [code])
    after
      :peer.stop(peer)
    end
  end
end
