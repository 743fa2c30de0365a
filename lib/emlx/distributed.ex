defmodule EMLX.Distributed.Block do
  @moduledoc """
  The `Nx.block/4` identity of an `EMLX.Distributed` collective: `op` and
  `args` are the op-table entry EMLX.Backend runs and its arguments after
  the block's tensor.
  """
  defstruct [:name, :op, args: []]
end

defmodule EMLX.Distributed do
  @moduledoc """
  MLX's distributed layer (`mlx::core::distributed`): one group of
  processes per OS process, and collectives over it.

      # on each of two OS processes, rank 0 and rank 1
      EMLX.Distributed.init(backend: :ring, rank: r, hosts: ["127.0.0.1:5001", "127.0.0.1:5002"])
      EMLX.Distributed.all_sum(grads)

  `init/1` joins the group once per OS process: `:backend` is `:ring`
  (TCP, MLX's own), `:mpi`, `:nccl` or `:any` (the first available, in
  MLX's order: NCCL on a CUDA build when its environment is set, then the
  ring, MPI);
  rank and hosts come from MLX's usual environment (`MLX_RANK`,
  `MLX_HOSTFILE`, a JSON list with one `["ip:port"]` list per rank; for
  NCCL `MLX_WORLD_SIZE`, `NCCL_HOST_IP` and `NCCL_PORT`) or from the
  `:rank` and `:hosts` options, which set them. The ranks connect to each
  other inside `init/1`, which returns when all have.

  `all_sum/1`, `all_max/1`, `all_min/1` and `all_gather/1` (a leading axis
  of ranks) run eagerly and inside `defn`; under `compiler: EMLX` they are
  instructions of the compiled program. `send/2` and `recv/3` move one
  tensor between two ranks (the ring only: MLX's NCCL backend has neither).

  Where they run: the ring's collectives run on the CPU stream (it works on
  host memory), NCCL's on the GPU's, so an NCCL group's tensors and
  compiled programs use `device: :gpu`. NCCL takes one GPU per process:
  start each rank with its own `CUDA_VISIBLE_DEVICES` (MLX's CUDA device 0
  is then that rank's GPU).

      # rank r of two, each started with CUDA_VISIBLE_DEVICES=r
      EMLX.Distributed.init(backend: :nccl, rank: r, hosts: ["127.0.0.1:5001", "127.0.0.1:5002"])

  The group has a command queue of its own: `init/1`, `send/2`, `recv/3`
  and the collectives called eagerly run there and are waited for at most
  `:timeout` ms (an option of `init/1`, default 60 s). Past it the call
  raises `EMLX.NIFError` and the group is marked broken (its ranks are out
  of step): every later call raises, and the queue, stuck in MLX's wait,
  is left to it. Collectives inside a compiled program run on the
  program's queue, with no timeout.

  Every collective first exchanges its tensor's type and shape, and raises
  `ArgumentError` when the ranks differ, rather than letting MLX read the
  wrong number of bytes; `recv/3` checks what arrives likewise. The
  exchange goes over a side channel that `init/1` opens: one TCP
  connection from each rank to rank 0 (at the first host's IPv4 address,
  for NCCL `NCCL_HOST_IP`, on a port rank 0 picks; rank 0 listens on that
  address, or on every interface when it is not one of its own, only
  until every rank has connected), one small message each way a call, on
  the host, with no device work and no wait for the device. Where rank 0's
  address is not known as an IPv4 address, the exchange is a small
  collective and a wait for it. Either way the check is a barrier: over
  NCCL on two H200s it made a 1 GiB all_sum 0.3-0.4 ms slower (both ranks
  launch the collective only after it). On the ring the side channel
  avoids the stalls MLX's ring has when small all_gathers and all_sums
  alternate (a checked one-element all_sum: 0.29-0.47 ms, against up to 8
  ms with the collective check). A peer that is gone
  closes its connection and the call raises `EMLX.NIFError`. A program
  holding a collective replays without `mx::compile` fusion, so that the
  check runs at every call.
  `init(check_shapes: false)` skips it, for programs whose ranks are known
  to agree; a mismatch then reaches MLX.
  """

  alias EMLX.Distributed.Block
  alias EMLX.NIF

  @backends %{any: 0, ring: 1, mpi: 2, nccl: 3}
  @kinds %{all_sum: 0, all_max: 1, all_min: 2, all_gather: 3}

  @doc """
  Joins the process group (once per OS process; later calls return the
  same group). Options: `:backend` (default `:any`), `:rank` and `:hosts`
  (a list of `"ip:port"`, one per rank; written to a hostfile for the ring;
  for NCCL the first is where rank 0 hands out the group's id, and the
  list's length is the group's size),
  `:strict` (default `true`: raise when no backend can start), `:timeout`
  (ms, default 60_000: how long `init/1` and every eager call wait),
  `:check_shapes` (default `true`: each collective first checks that the
  ranks bring the same type and shape; see the module doc). Returns
  `%{rank: r, size: n}`.
  """
  def init(opts \\ []) do
    opts =
      Keyword.validate!(opts,
        backend: :any,
        strict: true,
        rank: nil,
        hosts: nil,
        timeout: 60_000,
        check_shapes: true
      )

    code =
      Map.get(@backends, opts[:backend]) ||
        raise ArgumentError,
              "EMLX.Distributed.init/1: :backend must be one of #{inspect(Map.keys(@backends))}"

    case :persistent_term.get(__MODULE__, nil) do
      %{rank: rank, size: size} ->
        %{rank: rank, size: size}

      nil ->
        {device, size, where} = where(opts[:backend], opts[:hosts])
        args = [code, opts[:strict], opts[:rank] || -1, size, where, check_host(opts[:hosts])]
        queue = EMLX.CommandQueue.new!(device)

        group = %{
          queue: queue.ref,
          device: device,
          timeout: opts[:timeout],
          check_shapes: opts[:check_shapes] == true,
          backend: opts[:backend],
          broken: nil
        }

        [rank, size, nccl] = run_on(group, :dist_init, args, "init") |> Nx.to_list()
        # backend: :any took NCCL (its environment was set): a :gpu queue
        group =
          if nccl == 1 and device == :cpu,
            do: %{group | queue: EMLX.CommandQueue.new!(:gpu).ref, device: :gpu, backend: :nccl},
            else: group

        :persistent_term.put(__MODULE__, Map.merge(group, %{rank: rank, size: size}))
        %{rank: rank, size: size}
    end
  end

  # The group's device, and the size and address the NIF puts in MLX's
  # environment (-1 and [] leave the environment's): for NCCL rank 0's
  # "ip:port", for the ring the path of the JSON hostfile it reads.
  defp where(:nccl, nil), do: {:gpu, -1, []}
  defp where(:nccl, [first | _] = hosts), do: {:gpu, length(hosts), :binary.bin_to_list(first)}
  defp where(_, nil), do: {:cpu, -1, []}

  defp where(_, hosts) do
    path = Path.join(System.tmp_dir!(), "emlx-hosts-#{System.pid()}.json")
    File.write!(path, JSON.encode!(Enum.map(hosts, &[&1])))
    {:cpu, -1, :binary.bin_to_list(path)}
  end

  # Rank 0's IPv4 address, where the other ranks reach the shape check's
  # side channel (an NCCL group's comes from NCCL_HOST_IP, in the NIF): the
  # first of the hosts, or of the hostfile MLX_HOSTFILE names. [] when
  # unknown (the check is then a small collective).
  defp check_host(hosts) do
    first =
      case hosts do
        [host | _] -> host
        _ -> hostfile_first(System.get_env("MLX_HOSTFILE"))
      end

    with host when is_binary(host) <- first,
         ip = host |> String.split(":") |> Enum.drop(-1) |> Enum.join(":"),
         {:ok, _} <- :inet.parse_ipv4strict_address(String.to_charlist(ip)) do
      :binary.bin_to_list(ip)
    else
      _ -> []
    end
  end

  defp hostfile_first(nil), do: nil

  defp hostfile_first(path) do
    with {:ok, text} <- File.read(path),
         {:ok, [first | _]} <- JSON.decode(text) do
      case first do
        [host | _] when is_binary(host) -> host
        host when is_binary(host) -> host
        _ -> nil
      end
    else
      _ -> nil
    end
  end

  @doc "This process's rank in the group."
  def rank, do: group!().rank

  @doc "The number of processes in the group."
  def size, do: group!().size

  @doc "Whether `init/1` has run in this OS process."
  def initialized?, do: :persistent_term.get(__MODULE__, nil) != nil

  for {name, _} <- @kinds, name != :all_gather do
    @doc "`#{name}` of `tensor` over the group; every rank gets the result."
    def unquote(name)(tensor), do: collective(unquote(name), tensor)
  end

  @doc "Every rank's `tensor`, stacked along a new leading axis of size `size/0`."
  def all_gather(tensor), do: collective(:all_gather, tensor)

  @doc """
  Sends `tensor` to rank `dst` and returns when it is sent (the receiver
  must call `recv/3` with its shape and type).
  """
  def send(tensor, dst) when is_integer(dst) do
    group = point_to_point!("send")
    tensor = Nx.to_tensor(tensor)
    EMLX.Types.native!(tensor.type, "EMLX.Distributed.send")
    run_on(group, :dist_send, [tensor, dst], "send")
    :ok
  end

  @doc "Receives a tensor of `shape` and `type` sent by rank `src`."
  def recv(shape, type, src) when is_tuple(shape) and is_integer(src) do
    group = point_to_point!("recv")
    type = Nx.Type.normalize!(type)
    EMLX.Types.native!(type, "EMLX.Distributed.recv")
    run_on(group, :dist_recv, [shape, type, src], "recv")
  end

  defp point_to_point!(what) do
    case group!() do
      %{backend: :nccl} ->
        raise ArgumentError,
              "EMLX.Distributed.#{what}: MLX's NCCL backend has no send or recv (the ring has)"

      group ->
        group
    end
  end

  defp collective(name, tensor) do
    %{size: size, check_shapes: check} = group!()
    tensor = Nx.to_tensor(tensor)
    EMLX.Types.native!(tensor.type, "EMLX.Distributed.#{name}")

    out =
      if name == :all_gather,
        do: Nx.template(Tuple.insert_at(tensor.shape, 0, size), tensor.type),
        else: Nx.template(tensor.shape, tensor.type)

    struct = %Block{name: name, op: :dist_all, args: [Map.fetch!(@kinds, name), check]}
    Nx.block(struct, [tensor], out, &default(&1, &2, out))
  end

  # Off EMLX.Backend (another backend, or inside a defn traced for another
  # compiler) the collective is a runtime call: it runs eagerly on the
  # group's queue and its result comes back to the caller's backend.
  defp default(struct, tensor, out), do: Nx.runtime_call(out, tensor, [block: struct], &on_emlx/2)

  @doc false
  # A collective off EMLX.Backend (an Nx.runtime_call): eagerly, on the group's queue.
  def on_emlx(%Nx.Tensor{data: %backend{}} = t, block: %Block{} = block),
    do: block |> run_block(t) |> Nx.backend_transfer(backend)

  @doc false
  # A collective run eagerly, on the group's queue (EMLX.Backend records
  # it into a program being recorded instead).
  def run_block(%Block{name: name, op: op, args: extra}, t),
    do: run_on(group!(), op, [t | extra], Atom.to_string(name))

  # Runs `op` on the group's queue and waits for its result at most the
  # group's timeout; a tensor argument is brought there first.
  defp run_on(%{queue: queue, device: device, timeout: timeout} = group, op, args, what) do
    raw =
      Enum.map(args, fn
        %Nx.Tensor{} = t -> EMLX.Backend.ref_on(t, device, queue)
        other -> other
      end)

    ref = EMLX.Worker.run_op(queue, op, raw, nil)

    case EMLX.Worker.await(NIF.eval(queue, [ref]), timeout) do
      {:ok, :ok} ->
        EMLX.Backend.to_nx({device, ref})

      :timeout ->
        broken = "#{what} did not finish within #{timeout} ms"
        # (a group still joining is not stored at all)
        if Map.has_key?(group, :rank),
          do: :persistent_term.put(__MODULE__, Map.put(group, :broken, broken))

        raise EMLX.NIFError, "EMLX.Distributed.#{what}: #{broken} (a rank that never joined?)"
    end
  end

  defp group! do
    case :persistent_term.get(__MODULE__, nil) do
      nil ->
        raise ArgumentError,
              "EMLX.Distributed: not initialized (call EMLX.Distributed.init/1 first)"

      %{broken: nil} = group ->
        group

      %{broken: why} ->
        raise EMLX.NIFError, "EMLX.Distributed: the group is broken: an earlier call #{why}"
    end
  end
end
