defmodule EMLX.DistPeer do
  @moduledoc """
  What the EMLX.Distributed tests run on their peer nodes (separate OS
  processes, one MLX process group): start/1 makes the peers, the rest is
  called on them through `:peer.call/4`.
  """
  import Nx.Defn

  @doc """
  Starts `n` peer nodes (OS processes) that can run EMLX, and returns them.
  With `named: true` they are distributed Erlang nodes on 127.0.0.1 (epmd
  is started if needed), returned as `{peer, node}`. With `gpus: true`
  peer i sees only GPU i - 1 (`CUDA_VISIBLE_DEVICES`), as NCCL's ranks do.
  """
  def start(n, opts \\ []) do
    if opts[:named] do
      epmd = System.find_executable("epmd") || Path.join(:code.root_dir(), "bin/epmd")
      {_, 0} = System.cmd(epmd, ["-daemon"])
    end

    for i <- 1..n do
      args =
        if opts[:named],
          do: %{
            connection: :standard_io,
            name: :"emlx_peer_#{i}_#{System.unique_integer([:positive])}",
            host: ~c"127.0.0.1",
            longnames: true
          },
          else: %{connection: :standard_io}

      args =
        if opts[:gpus],
          do: Map.put(args, :env, [{~c"CUDA_VISIBLE_DEVICES", ~c"#{i - 1}"}]),
          else: args

      {:ok, peer, node} = :peer.start(args)
      :ok = :peer.call(peer, :code, :add_paths, [:code.get_path()])
      {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:emlx])
      if opts[:named], do: {peer, node}, else: peer
    end
  end

  ## Nx.Serving across two nodes

  defn serving_fun(x), do: Nx.sin(x) * 2 + Nx.cos(x)

  @doc "Starts a distributed Nx.Serving `name` over EMLX on this node (kept alive after the call)."
  def serve(name) do
    parent = self()

    spawn(fn ->
      serving =
        Nx.Serving.jit(&serving_fun/1, compiler: EMLX)
        |> Nx.Serving.client_postprocessing(fn {out, _meta}, _info ->
          {Nx.backend_transfer(out, Nx.BinaryBackend), node()}
        end)

      {:ok, _} =
        Nx.Serving.start_link(serving: serving, name: name, batch_size: 4, batch_timeout: 50)

      send(parent, :serving)
      Process.sleep(:infinity)
    end)

    receive do
      :serving -> :ok
    after
      30_000 -> :timeout
    end
  end

  @doc "From a node without that serving: each input through the remote serving, 4 callers at once."
  def call_remote(server, name, inputs) do
    true = Node.connect(server)
    wait_for_serving(name, 100)

    inputs
    |> Enum.map(fn x ->
      Task.async(fn ->
        batch = Nx.Batch.stack([Nx.backend_copy(x, Nx.BinaryBackend)])
        {out, served_by} = Nx.Serving.batched_run({:distributed, name}, batch)
        {out[0], served_by}
      end)
    end)
    |> Task.await_many(60_000)
  end

  defp wait_for_serving(name, tries) do
    if :pg.get_members(Nx.Serving.PG, name) == [] and tries > 0 do
      Process.sleep(50)
      wait_for_serving(name, tries - 1)
    end
  end

  @doc """
  Runs `EMLX.DistPeer.name(rank, args...)` on every peer at once and returns
  the results in rank order (a raised exception as `{:raised, module, message}`).
  """
  def on_all(peers, name, args \\ [], timeout \\ 120_000) do
    peers
    |> Enum.with_index()
    |> Enum.map(fn {peer, rank} ->
      Task.async(fn -> :peer.call(peer, __MODULE__, :run, [name, [rank | args]], timeout) end)
    end)
    |> Task.await_many(timeout + 5_000)
  end

  @doc false
  def run(name, args) do
    apply(__MODULE__, name, args)
  rescue
    e -> {:raised, e.__struct__, Exception.message(e)}
  end

  alias EMLX.Distributed

  @doc "The collectives eagerly, on the evaluator, compiled and from Nx.BinaryBackend."
  def collectives(rank, device \\ :cpu) do
    t = Nx.tensor([1.0 + rank, 10.0 * (rank + 1), -rank], backend: {EMLX.Backend, device: device})

    f =
      &{Distributed.all_sum(&1), Distributed.all_max(&1), Distributed.all_min(&1),
       Distributed.all_gather(&1)}

    for r <- [
          f.(t),
          Nx.Defn.jit(f).(t),
          Nx.Defn.jit(f, compiler: EMLX, device: device).(t),
          f.(Nx.backend_copy(t, Nx.BinaryBackend))
        ],
        do: r |> Tuple.to_list() |> Enum.map(&Nx.to_list/1)
  end

  @doc "Rank 0 sends three tensors; rank 1 receives one, asks for a wrong shape, then takes the third."
  def send_recv(0) do
    Distributed.send(Nx.iota({2, 3}, type: :s32, backend: EMLX.Backend), 1)
    Distributed.send(Nx.tensor([5.0, 6.0], backend: EMLX.Backend), 1)
    Distributed.send(Nx.tensor([7.0, 8.0], backend: EMLX.Backend), 1)
  end

  def send_recv(1) do
    a = Distributed.recv({2, 3}, :s32, 0) |> Nx.to_list()

    wrong =
      try do
        Distributed.recv({3}, :f32, 0)
      rescue
        e in ArgumentError -> Exception.message(e)
      end

    {a, wrong, Distributed.recv({2}, :f32, 0) |> Nx.to_list()}
  end

  ## What both backends' tests assert (ring in distributed_test.exs, NCCL in distributed_nccl_test.exs)

  import ExUnit.Assertions

  @doc "Each rank's collectives (`collectives/2`) give rank 0's [1, 10, 0] and rank 1's [2, 20, -1] reduced."
  def assert_collectives(peers, device) do
    want = [
      [3.0, 30.0, -1.0],
      [2.0, 20.0, 0.0],
      [1.0, 10.0, -1.0],
      [[1.0, 10.0, 0.0], [2.0, 20.0, -1.0]]
    ]

    for per_rank <- on_all(peers, :collectives, [device], 300_000),
        got <- per_rank,
        do: assert(got == want)
  end

  @doc "Ranks with different shapes raise ArgumentError on each, and the group still works after."
  def assert_mismatch_raises(peers) do
    for r <- on_all(peers, :mismatched) do
      assert {:raised, ArgumentError, message} = r
      assert message =~ "the ranks' tensors differ"
    end

    assert on_all(peers, :sum_ranks) == [3.0, 3.0]
  end

  @doc """
  Two new peers join a group (`join/5`'s `backend`), optionally sum once,
  then rank 1 stops: rank 0's next all_sum raises EMLX.NIFError matching
  `pattern`, and rank 0's VM still computes.
  """
  def assert_gone_peer_raises(backend, pattern, opts \\ []) do
    [p0, p1] = peers = start(2, opts)

    try do
      port = 41_000 + :rand.uniform(20_000)
      joined = on_all(peers, :join, [2, port, 300_000, backend], 300_000)
      assert joined == [%{rank: 0, size: 2}, %{rank: 1, size: 2}]
      if opts[:sum_first], do: assert(on_all(peers, :sum_ranks) == [3.0, 3.0])
      :peer.stop(p1)

      assert {:raised, EMLX.NIFError, message} =
               :peer.call(p0, __MODULE__, :run, [:sum_ranks, [0]], 60_000)

      assert message =~ pattern
      code = "Nx.tensor(2.0, backend: EMLX.Backend) |> Nx.multiply(2) |> Nx.to_number()"
      assert {4.0, _} = :peer.call(p0, Code, :eval_string, [code])
    after
      :peer.stop(p0)
    end
  end

  @doc "Two ranks trained on halves end equal to each other and to one process on the whole batch."
  def assert_trained_like_whole(peers, steps, device) do
    [w0, w1] = on_all(peers, :train, [steps, device], 300_000)
    whole = train(nil, steps, device)

    for k <- [:w1, :b1, :w2, :b2] do
      assert Nx.to_binary(w0[k]) == Nx.to_binary(w1[k])
      assert Nx.all_close(w0[k], whole[k], atol: 1.0e-5, rtol: 1.0e-4) |> Nx.to_number() == 1
    end

    refute Nx.all_close(whole.w1, params().w1, atol: 1.0e-4) |> Nx.to_number() == 1
  end

  @doc "Rank 0 sends one tensor to rank 1."
  def send_one(0), do: Distributed.send(Nx.tensor([1.0], backend: EMLX.Backend), 1)

  @doc "An all_sum whose ranks bring tensors of different shapes."
  def mismatched(rank),
    do: Distributed.all_sum(Nx.iota({2 + rank}, backend: EMLX.Backend)) |> Nx.to_list()

  @doc "all_sum of rank + 1."
  def sum_ranks(rank),
    do: Distributed.all_sum(Nx.tensor(rank + 1.0, backend: EMLX.Backend)) |> Nx.to_number()

  @doc "Joins a group (`:ring` or `:nccl`) of `size` ranks on 127.0.0.1 from `port` on."
  def join(rank, size, port, timeout \\ 60_000, backend \\ :ring) do
    hosts = for i <- 0..(size - 1), do: "127.0.0.1:#{port + i}"
    EMLX.Distributed.init(backend: backend, rank: rank, hosts: hosts, timeout: timeout)
  end

  @doc """
  Joins a ring of two whose hosts are named ("localhost"), not IPv4
  addresses: no side channel, so the shape check is a small collective.
  """
  def join_named(rank, port) do
    hosts = ["localhost:#{port}", "localhost:#{port + 1}"]
    EMLX.Distributed.init(backend: :ring, rank: rank, hosts: hosts)
  end

  @doc """
  Joins a group of two with `backend: :any` (the ring, on a CPU build) and
  `check_shapes: false`, then all_sums rank + 1.
  """
  def unchecked_sum(rank, port) do
    hosts = ["127.0.0.1:#{port}", "127.0.0.1:#{port + 1}"]
    EMLX.Distributed.init(backend: :any, rank: rank, hosts: hosts, check_shapes: false)
    sum_ranks(rank)
  end

  @doc "Rank 0 sums while rank 1 does not join: the timeout, then a broken group."
  def lone_sum(0) do
    one = Nx.tensor([1.0], backend: EMLX.Backend)
    first = nif_error_message(fn -> Distributed.all_sum(one) end)
    second = nif_error_message(fn -> Distributed.all_max(one) end)
    {first, second, Nx.to_number(Nx.add(Nx.tensor(1.0, backend: EMLX.Backend), 1))}
  end

  def lone_sum(1), do: :idle

  defp nif_error_message(fun) do
    fun.()
  rescue
    e in EMLX.NIFError -> Exception.message(e)
  end

  ## Data-parallel training of a small digits-shaped MLP (64-32-10)

  @doc "The data set every rank makes alike: 64 samples of 64 features, 10 classes."
  def data do
    key = Nx.Random.key(7)
    {x, key} = Nx.Random.uniform(key, shape: {64, 64}, type: :f32)
    {labels, _} = Nx.Random.randint(key, 0, 10, shape: {64}, type: :s32)
    {x, labels}
  end

  @doc "The initial parameters, the same on every rank."
  def params do
    key = Nx.Random.key(11)
    {w1, key} = Nx.Random.normal(key, 0.0, 0.1, shape: {64, 32}, type: :f32)
    {w2, _} = Nx.Random.normal(key, 0.0, 0.1, shape: {32, 10}, type: :f32)
    %{w1: w1, b1: Nx.broadcast(0.0, {32}), w2: w2, b2: Nx.broadcast(0.0, {10})}
  end

  defn loss(p, x, labels) do
    logits = x |> Nx.dot(p.w1) |> Nx.add(p.b1) |> Nx.max(0) |> Nx.dot(p.w2) |> Nx.add(p.b2)
    logp = logits - Nx.logsumexp(logits, axes: [1], keep_axes: true)
    onehot = Nx.equal(Nx.new_axis(labels, 1), Nx.iota({1, 10}))
    -Nx.mean(Nx.sum(logp * onehot, axes: [1]))
  end

  @doc "One SGD step on the whole batch."
  defn step(p, x, labels) do
    g = grad(p, &loss(&1, x, labels))
    update(p, g)
  end

  @doc "One SGD step on this rank's half, gradients averaged over the ranks with all_sum."
  defn step_shared(p, x, labels) do
    g = grad(p, &loss(&1, x, labels))
    g = %{w1: avg(g.w1), b1: avg(g.b1), w2: avg(g.w2), b2: avg(g.b2)}
    update(p, g)
  end

  deftransformp avg(t), do: Nx.divide(EMLX.Distributed.all_sum(t), EMLX.Distributed.size())

  defnp update(p, g) do
    %{w1: p.w1 - 0.5 * g.w1, b1: p.b1 - 0.5 * g.b1, w2: p.w2 - 0.5 * g.w2, b2: p.b2 - 0.5 * g.b2}
  end

  @doc "Trains `steps` steps: on the whole batch (rank nil) or on the half of `rank`."
  def train(rank, steps, device \\ :cpu) do
    backend = {EMLX.Backend, device: device}
    {x, labels} = data()
    p = Nx.backend_transfer(params(), backend)

    {x, labels, fun} =
      case rank do
        nil ->
          {x, labels, &step/3}

        r ->
          half = div(elem(x.shape, 0), 2)

          {Nx.slice_along_axis(x, r * half, half, axis: 0),
           Nx.slice_along_axis(labels, r * half, half, axis: 0), &step_shared/3}
      end

    [x, labels] = Enum.map([x, labels], &Nx.backend_transfer(&1, backend))
    jit = Nx.Defn.jit(fun, compiler: EMLX, device: device)
    p = Enum.reduce(1..steps, p, fn _, p -> jit.(p, x, labels) end)
    Map.new(p, fn {k, v} -> {k, Nx.backend_transfer(v, Nx.BinaryBackend)} end)
  end
end
