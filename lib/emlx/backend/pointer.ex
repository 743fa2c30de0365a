defmodule EMLX.Backend.Pointer do
  @moduledoc false
  # `Nx.to_pointer/2` and `Nx.from_pointer/5` for EMLX.Backend.

  alias EMLX.{CommandQueue, NIF, Types, Worker}
  alias EMLX.Backend.Emulated
  alias Nx.Tensor, as: T

  @doc """
  `Nx.to_pointer/2`: `mode: :local` (default) evaluates the tensor, makes it
  row-contiguous in place and returns the address of MLX's own buffer (no
  copy; valid while the tensor lives). `mode: :ipc` copies the data into a
  new POSIX shared-memory segment with `:permissions` (default `0o400`),
  since MLX arrays are immutable; the receiver unlinks it when it opens it
  (see `EMLX.shm_unlink/1` otherwise). A tensor of a type MLX lacks (see
  `EMLX.Types`) gives its stored bytes: Nx's binary of it (c128 as pairs
  of f64, sub-byte integers bit-packed), which `from_pointer/5` reads back.
  """
  def to_pointer(%T{data: %EMLX.Backend{} = data}, opts) do
    %EMLX.Backend{ref: ref, queue: queue} = EMLX.Backend.realize(data)
    mode = Keyword.get(opts, :mode, :local)
    permissions = Keyword.get(opts, :permissions, 0o400)

    case :telemetry.span([:emlx, :to_pointer], %{mode: mode}, fn ->
           {NIF.to_pointer(queue, ref, mode, permissions) |> Worker.await(), %{mode: mode}}
         end) do
      {address, size} when is_integer(address) ->
        %Nx.Pointer{kind: :local, address: address, data_size: size}

      {name, size} ->
        %Nx.Pointer{kind: :ipc, handle: name, data_size: size}
    end
  end

  @doc """
  `Nx.from_pointer/5`: builds a tensor from a `:local` address of this OS
  process or an `:ipc` shared-memory handle (which it unlinks). The data is
  copied into an MLX buffer: MLX may reuse an input buffer in place for an
  output, which must never write into memory EMLX does not own. A bad
  address raises instead of crashing (the copy uses process_vm_readv).
  """
  def from_pointer(%Nx.Pointer{} = pointer, type, shape, backend_opts, opts) do
    device = EMLX.Backend.device_option(backend_opts)
    Types.check!(type, :from_pointer)
    queue = CommandQueue.resolve(device)

    source =
      case pointer do
        %Nx.Pointer{kind: :local, address: address} when is_integer(address) -> address
        %Nx.Pointer{kind: :ipc, handle: handle} when is_binary(handle) -> handle
        other -> raise ArgumentError, "invalid pointer: #{inspect(other)}"
      end

    # A type MLX lacks is stored as its bytes (EMLX.Backend.Emulated):
    # they are read as a uint8 vector.
    ref =
      if Types.emulated?(type),
        do: NIF.from_pointer(queue, source, {Emulated.byte_count(type, shape)}, {:u, 8}),
        else: NIF.from_pointer(queue, source, shape, type)

    ref = Worker.await(ref)
    names = Keyword.get(opts, :names) || List.duplicate(nil, tuple_size(shape))
    %T{shape: shape, type: type, names: names, data: EMLX.Backend.data(ref, device, queue)}
  end
end
