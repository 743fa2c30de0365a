defmodule EMLX.Backend.Emulated do
  @moduledoc false
  # The types MLX lacks (EMLX.Types.emulated/0: c128, f8, f8_e4m3fn, u2,
  # u4, s2, s4), computed exactly with Nx.BinaryBackend's implementation
  # (c128 arithmetic that float64 pairs on MLX give alike: Complex128).
  #
  # (EMLX.Backend's struct is matched as a map here: EMLX.Backend is compiled
  # after this module, which it uses.)
  #
  # Storage: such a tensor's data is an ordinary %EMLX.Backend{} whose array
  # is a uint8 vector holding the tensor's Nx binary (Nx.to_binary/1's
  # bytes; sub-byte types are bit-packed and padded with zero bits to whole
  # bytes, the bit count being the tensor's size times its element bits).
  # Devices, queues, copies, deallocation and GC treat it as any array.
  #
  # Dispatch: `use`d at the end of EMLX.Backend, `__before_compile__/1`
  # wraps every Nx.Backend callback EMLX.Backend defines (but the few that
  # work on any array as it is, @unwrapped): a first clause whose guard
  # matches an emulated type in any tensor argument (the out template
  # included) sends the call to `call/2`; otherwise the original definition
  # runs (`super`). Arguments that may be lists or tuples of tensors
  # (@lists) are walked when no guard matched.
  #
  # `call/2` turns the tensor arguments into Nx.BinaryBackend tensors (the
  # stored bytes; ordinary EMLX tensors are read back), applies the same
  # Nx.BinaryBackend callback with the same out template and options (with
  # Nx.BinaryBackend as the default backend meanwhile, for the tensors a
  # callback's function creates), and brings the result back: on the
  # device of the first EMLX tensor argument (else the default device, or
  # the creation callback's :device), on the queue that device resolves to
  # in this process, as EMLX.Backend's own ops do.

  import EMLX.Types, only: [is_emulated: 1]

  alias EMLX.{CommandQueue, NIF, Worker}
  alias EMLX.Defn.Recorder
  alias Nx.Defn.{Composite, Tree}
  alias Nx.Tensor, as: T

  # Work on the stored array as it is, whatever it holds (or are no
  # callbacks on tensors): EMLX.Backend's own definitions serve.
  @unwrapped [init: 1, backend_transfer: 3, backend_deallocate: 1, to_pointer: 2, from_pointer: 5]

  # Argument positions (from 0) that may hold lists or tuples of tensors.
  @lists %{concatenate: [1], stack: [1], slice: [2], put_slice: [2], block: [1, 2]}

  # Creation callbacks: their last argument is the backend options.
  @creation [:constant, :eye, :iota, :from_binary]

  @doc "An EMLX.Quantization weight (a tensor on EMLX.Backend with a quantization config)."
  defguard quantized_tensor(x)
           when is_struct(:erlang.map_get(:data, x), EMLX.Backend) and
                  :erlang.map_get(:quantization_config, :erlang.map_get(:data, x)) != nil

  @doc """
  A tensor of an emulated type that is not an EMLX.Quantization weight
  (whose storage type, s2/s4, is not its data's type).
  """
  defguard emulated_tensor(x)
           when is_struct(x, T) and is_emulated(:erlang.map_get(:type, x)) and
                  not quantized_tensor(x)

  defmacro __using__(_opts) do
    quote do
      require EMLX.Types
      require EMLX.Backend.Emulated
      @before_compile EMLX.Backend.Emulated
    end
  end

  defmacro __before_compile__(env) do
    callbacks = Nx.Backend.behaviour_info(:callbacks)

    for {name, arity} = fa <- Module.definitions_in(env.module, :def),
        fa in callbacks,
        fa not in @unwrapped do
      args = Macro.generate_arguments(arity, __MODULE__)

      # One clause per argument, matching `%T{type: {kind, size}}` there: a
      # few ns an argument when no type is emulated.
      clauses =
        for {arg, i} <- Enum.with_index(args) do
          kind = Macro.var(:kind, __MODULE__)
          size = Macro.var(:size, __MODULE__)
          pattern = quote do: %T{type: {unquote(kind), unquote(size)}} = unquote(arg)
          params = List.replace_at(args, i, pattern)

          quote do
            def unquote(name)(unquote_splicing(params))
                when EMLX.Types.is_emulated(unquote(kind), unquote(size)) and
                       not EMLX.Backend.Emulated.quantized_tensor(unquote(arg)),
                do: EMLX.Backend.Emulated.call(unquote(name), unquote(args))
          end
        end

      fallback =
        case Map.get(@lists, name, []) do
          [] ->
            quote do: super(unquote_splicing(args))

          positions ->
            lists = Enum.map(positions, &Enum.at(args, &1))

            quote do
              if EMLX.Backend.Emulated.any?(unquote(lists)),
                do: EMLX.Backend.Emulated.call(unquote(name), unquote(args)),
                else: super(unquote_splicing(args))
            end
        end

      quote do
        defoverridable [{unquote(name), unquote(arity)}]
        @impl true
        unquote_splicing(clauses)
        def unquote(name)(unquote_splicing(args)), do: unquote(fallback)
      end
    end
  end

  @doc """
  Whether a term holds a tensor of an emulated type, in lists and tuples
  (a slice's start indices, a concatenate's tensors, a block's arguments).
  """
  def any?([]), do: false
  def any?([head | tail]) when is_integer(head), do: any?(tail)
  def any?([head | tail]), do: any?(head) or any?(tail)
  def any?(t) when emulated_tensor(t), do: true
  def any?(tuple) when is_tuple(tuple), do: any?(Tuple.to_list(tuple))
  def any?(_), do: false

  @doc """
  Whether a traced `defn` expression (a container of `Nx.Defn.Expr`
  tensors) has a node of an emulated type, in any scope (loop bodies,
  branches, blocks' default implementations). One visit per node id.
  """
  def expr?(container) do
    Composite.reduce(container, %{}, &visit/2)
    false
  catch
    :emlx_emulated -> true
  end

  defp visit(%T{type: type}, _seen) when is_emulated(type), do: throw(:emlx_emulated)

  defp visit(%T{data: %Nx.Defn.Expr{id: id}} = t, seen) do
    case seen do
      %{^id => _} ->
        seen

      %{} ->
        {_, seen} = Tree.apply_args(t, :all, Map.put(seen, id, true), &{&1, visit(&1, &2)})
        seen
    end
  end

  defp visit(_other, seen), do: seen

  ## The callbacks

  @doc "Runs callback `name` with `args` (see the module comment)."
  def call(name, args) when name in @creation do
    fits_host!(name, args)
    {opts, args} = List.pop_at(args, -1)
    device = EMLX.Backend.device_option(opts)
    result = binary_backend(name, args ++ [[]])
    to_emlx(result, device, CommandQueue.resolve(device))
  end

  def call(:to_binary, [%T{} = t, limit]), do: read(t, limit)

  # Nx.Backend.inspect/3 (Nx 0.13.1) reads sub-byte elements as if each
  # were followed by whole bytes, and raises for them on every backend: they
  # are printed from their values widened to 8 bits.
  def call(:inspect, [%T{type: type} = t, inspect_opts]) do
    size = flat_size(t)
    limit = if inspect_opts.limit == :infinity, do: size, else: inspect_opts.limit + 1
    bits = read(t, min(limit, size))

    case type do
      {:u, n} when n < 8 ->
        wide = for <<x::size(n)-unsigned-native <- bits>>, into: <<>>, do: <<x::8-unsigned>>
        Nx.Backend.inspect(%{t | type: {:u, 8}}, wide, inspect_opts)

      {:s, n} when n < 8 ->
        wide = for <<x::size(n)-signed-native <- bits>>, into: <<>>, do: <<x::8-signed>>
        Nx.Backend.inspect(%{t | type: {:s, 8}}, wide, inspect_opts)

      _ ->
        Nx.Backend.inspect(t, bits, inspect_opts)
    end
  end

  def call(:backend_copy, [
        %T{data: %{__struct__: EMLX.Backend, device: from}} = t,
        EMLX.Backend,
        opts
      ]) do
    device = Keyword.get(opts, :device, from)
    store(t, read(t, flat_size(t)), device, CommandQueue.resolve(device))
  end

  def call(:backend_copy, [%T{} = t, backend, opts]),
    do: backend.from_binary(t, read(t, flat_size(t)), opts)

  def call(:to_batched, [out, t, opts]) do
    fits_host!(:to_batched, [t])
    {device, queue} = target([t])
    batches = Nx.BinaryBackend.to_batched(out, to_binary_backend(t), opts)
    Stream.map(batches, &to_emlx(&1, device, queue))
  end

  def call(:block, [struct, out | args]) do
    fits_host!(:block, [out | args])
    {device, queue} = target(args)
    recording()
    result = binary_backend(:block, [struct, out | Enum.map(args, &to_binary_backend/1)])
    to_emlx(result, device, queue)
  end

  # Every other callback: the out template first, then its arguments (c128
  # arithmetic that float64 pairs on MLX compute alike: EMLX.Backend.Complex128).
  def call(name, [out | args]) do
    if EMLX.Backend.Complex128.native?(name, [out | args]),
      do: EMLX.Backend.Complex128.run(name, [out | args]),
      else: binary_callback(name, out, args)
  end

  defp binary_callback(name, out, args) do
    fits_host!(name, [out | args])
    {device, queue} = target(args)
    recording()
    result = binary_backend(name, [out | Enum.map(args, &to_binary_backend/1)])
    to_emlx(result, device, queue)
  end

  # The host does this work through Nx.BinaryBackend, over binaries of the
  # arguments and the result: past :emulated_max_bytes of them (default
  # 1 GiB; `config :emlx, :emulated_max_bytes`), an ArgumentError rather
  # than a host out of memory (Nx.BinaryBackend would take hours there).
  defp fits_host!(name, terms) do
    bytes = host_bytes(terms, 0)
    max = Application.get_env(:emlx, :emulated_max_bytes, 1_073_741_824)

    if bytes > max do
      raise ArgumentError,
            "EMLX.Backend: #{name} with a type MLX lacks runs on the host through " <>
              "Nx.BinaryBackend, here over #{bytes} bytes of tensor data, past the limit of " <>
              "#{max} (config :emlx, :emulated_max_bytes)"
    end
  end

  defp host_bytes(%T{type: {_, bits}} = t, acc), do: acc + div(flat_size(t) * bits + 7, 8)
  defp host_bytes(list, acc) when is_list(list), do: Enum.reduce(list, acc, &host_bytes/2)

  defp host_bytes(tuple, acc) when is_tuple(tuple) and not is_struct(tuple),
    do: tuple |> Tuple.to_list() |> host_bytes(acc)

  defp host_bytes(_other, acc), do: acc

  defp binary_backend(name, args) do
    Nx.with_default_backend(Nx.BinaryBackend, fn -> apply(Nx.BinaryBackend, name, args) end)
  end

  # While `compiler: EMLX` records (only a defn inlined into another's
  # recording gets here: EMLX.Defn runs a defn with emulated types op by
  # op), the result is a real array made now: the recording must not be
  # cached as a plan, which would replay it as a constant.
  defp recording, do: if(Recorder.active?(), do: Recorder.no_plan(), else: :ok)

  # The device of the first EMLX tensor among the arguments (lists and
  # tuples included), else the default one; its queue as this process
  # resolves it.
  defp target(args) do
    device = Enum.find_value(args, &device_in/1) || CommandQueue.default_device()
    {device, CommandQueue.resolve(device)}
  end

  defp device_in(%T{data: %{__struct__: EMLX.Backend, device: device}}), do: device
  defp device_in(list) when is_list(list), do: Enum.find_value(list, &device_in/1)
  defp device_in(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> device_in()
  defp device_in(_), do: nil

  ## Conversions

  # A tensor argument as an Nx.BinaryBackend tensor; other arguments as they are.
  defp to_binary_backend(%T{data: %{__struct__: EMLX.Backend}} = t),
    do: %{t | data: %Nx.BinaryBackend{state: EMLX.Backend.to_binary(t, flat_size(t))}}

  defp to_binary_backend(%T{data: %Nx.BinaryBackend{}} = t), do: t
  defp to_binary_backend(%T{data: %Nx.Defn.Expr{}} = t), do: t
  defp to_binary_backend(%T{} = t), do: Nx.backend_copy(t, Nx.BinaryBackend)

  defp to_binary_backend(list) when is_list(list), do: Enum.map(list, &to_binary_backend/1)
  defp to_binary_backend(other), do: other

  # A result as EMLX tensors on `device`: emulated types stored as bytes,
  # the others as MLX arrays of their type.
  defp to_emlx(%T{type: type, data: %Nx.BinaryBackend{state: bits}} = t, device, queue)
       when is_emulated(type),
       do: store(t, bits, device, queue)

  defp to_emlx(%T{data: %Nx.BinaryBackend{state: bits}} = t, device, _queue),
    do: EMLX.Backend.from_binary(t, bits, device: device)

  defp to_emlx(tuple, device, queue) when is_tuple(tuple) and not is_struct(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&to_emlx(&1, device, queue)) |> List.to_tuple()

  defp to_emlx(list, device, queue) when is_list(list),
    do: Enum.map(list, &to_emlx(&1, device, queue))

  defp to_emlx(other, _device, _queue), do: other

  @doc """
  `t` (a template of an emulated type) with data holding `bits`, its Nx
  binary, as a uint8 array on `device` and `queue`.
  """
  def store(%T{} = t, bits, device, queue) when is_bitstring(bits) do
    expected = flat_size(t) * elem(t.type, 1)

    unless bit_size(bits) == expected do
      raise ArgumentError,
            "EMLX.Backend: a #{Nx.Type.to_string(t.type)} tensor of shape #{inspect(t.shape)} " <>
              "takes #{expected} bits of data, got #{bit_size(bits)}"
    end

    bytes =
      case rem(bit_size(bits), 8) do
        0 -> bits
        r -> <<bits::bitstring, 0::size(8 - r)>>
      end

    ref = EMLX.Worker.from_binary(queue, bytes, {byte_size(bytes)}, {:u, 8})
    EMLX.GC.produced(%{t | shape: {byte_size(bytes)}, type: {:u, 8}}, :emulated, ref)
    %{t | data: EMLX.Backend.data(ref, device, queue)}
  end

  def store(%T{} = t, list, device, queue) when is_list(list),
    do: store(t, :erlang.list_to_bitstring(list), device, queue)

  @doc "The first `limit` elements of `t` (of an emulated type), as Nx.to_binary/2 gives them."
  def read(%T{type: {_, size}, data: %{__struct__: EMLX.Backend} = data}, limit) do
    %{ref: ref, queue: queue} = EMLX.Backend.realize(data)
    bits = limit * size
    bytes = NIF.to_binary(queue, ref, div(bits + 7, 8)) |> Worker.await()
    <<head::bitstring-size(bits), _::bitstring>> = bytes
    head
  end

  @doc "The bytes `Nx.from_pointer/5` reads for a tensor of `type` and `shape`."
  def byte_count(type, shape), do: div(Tuple.product(shape) * elem(type, 1) + 7, 8)

  # Elements of the whole tensor, vectorized axes included.
  defp flat_size(%T{shape: shape, vectorized_axes: vectorized}),
    do: Enum.reduce(vectorized, Tuple.product(shape), fn {_, n}, acc -> acc * n end)
end
