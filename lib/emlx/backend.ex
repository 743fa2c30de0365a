defmodule EMLX.Backend do
  @moduledoc """
  The `Nx.Backend` of EMLX: every tensor is an MLX array, and every op is
  computed by MLX on the worker thread of a command queue.

      Nx.default_backend({EMLX.Backend, device: :cpu})

  Options: `:device` (`:cpu` or `:gpu`, default `EMLX.default_device/0`);
  any other option raises `ArgumentError`.

  Types: u8..u64, s8..s64, f16, bf16, f32, f64 and c64 are MLX's. The types
  MLX lacks (c128, f8, f8_e4m3fn, u2, u4, s2, s4) are computed exactly with
  Nx.BinaryBackend's implementation, op by op (`EMLX.Types`); nothing is
  silently downcast.
  """

  @behaviour Nx.Backend
  # Wraps the callbacks: emulated types go to EMLX.Backend.Emulated.
  use EMLX.Backend.Emulated

  # `ref` is the MLX array. While `compiler: EMLX` records a defn, an op's
  # result has no array yet: `ref` is nil and `placeholder` holds the
  # recorder's placeholder; `realize/1` gives data with the real array.
  # `scalar` (an integer constant's value) and `host` (a small integer
  # tensor's bytes, from a binary) are values the host knows, which
  # EMLX.Backend.Bounds checks shift amounts and indices with.
  defstruct [:ref, :placeholder, :device, :queue, :quantization_config, :scalar, :host]

  alias Nx.Tensor, as: T
  alias EMLX.{CommandQueue, Dispatch, NIF, Types, Worker}
  alias EMLX.Backend.{Bounds, Fold, LinAlg}

  @linalg_blocks LinAlg.blocks()

  import EMLX.Backend.Emulated, only: [emulated_tensor: 1]

  @doc "The Nx types EMLX.Backend stores: MLX's and the emulated ones (see `EMLX.Types`)."
  defdelegate supported_types, to: EMLX.Types, as: :supported

  ## Conversions

  @doc """
  Converts an Nx tensor to a device ref `{device, ref}` (transferring it to
  EMLX when needed). For a type MLX lacks (see `EMLX.Types`) the array is
  the tensor's stored bytes, a uint8 vector.
  """
  # A type MLX lacks: its stored bytes, a uint8 vector (see EMLX.Types).
  def from_nx(%T{data: %__MODULE__{} = data}), do: {data.device, realize(data).ref}

  def from_nx(%T{} = tensor) do
    tensor |> Nx.backend_copy(EMLX.Backend) |> from_nx()
  end

  @doc "Converts a device ref to an Nx tensor."
  def to_nx({device, ref}) when is_reference(ref) do
    {shape, mlx_type, owner} = Worker.info(ref)
    ref = if mlx_type == :bool, do: cast_bool(ref, owner), else: ref
    type = Types.to_nx(mlx_type)
    names = List.duplicate(nil, tuple_size(shape))

    %T{
      shape: shape,
      type: type,
      names: names,
      data: data(ref, device, owner)
    }
  end

  @doc "Converts a device ref to an Nx tensor, checking it against the template `t`."
  def to_nx({_device, _ref} = device_ref, %T{shape: shape, type: type} = t) do
    %T{shape: got_shape, type: got_type, data: data} = to_nx(device_ref)

    if got_shape != shape do
      raise ArgumentError,
            "expected an array of shape #{inspect(shape)}, got #{inspect(got_shape)}"
    end

    %{t | data: if(got_type != type, do: cast_data(data, type), else: data)}
  end

  # The data cast to `type` on its own queue (a new handle of the same array
  # when the type is the same).
  defp cast_data(%__MODULE__{queue: queue, device: device} = data, type) do
    handle = Dispatch.run(queue, :as_type, [handle(data), type], nil)
    data(handle, device, queue)
  end

  defp cast_bool(ref, queue), do: Dispatch.run(queue, :as_type, [ref, Types.to_nx(:bool)], nil)

  ## Creation

  @impl true
  def init(opts) do
    opts = Keyword.validate!(opts, [:device])
    device = Keyword.get(opts, :device, CommandQueue.default_device())

    unless device in [:cpu, :gpu] do
      raise ArgumentError, "EMLX.Backend :device must be :cpu or :gpu, got: #{inspect(device)}"
    end

    _ = CommandQueue.default(device)
    Keyword.put(opts, :device, device)
  end

  @impl true
  def constant(%T{shape: shape, type: type} = out, number, opts) do
    case create(out, opts, :full, [number_arg(number), shape, type], :constant) do
      %T{data: %__MODULE__{} = data} = t when shape == {} and is_integer(number) ->
        %{t | data: %{data | scalar: number}}

      t ->
        t
    end
  end

  @impl true
  def eye(%T{shape: shape, type: type} = out, opts),
    do: create(out, opts, :eye, [shape, type], :eye)

  @impl true
  def iota(%T{shape: shape, type: type} = out, axis, opts),
    do: create(out, opts, :iota, [shape, axis, type], :iota)

  @impl true
  def from_binary(%T{shape: shape, type: type} = out, binary, opts) do
    device = device_option(opts)
    Types.native!(type, :from_binary)
    queue = CommandQueue.resolve(device)
    ref = Worker.from_binary(queue, binary, shape, type)
    out |> wrap(ref, device, queue) |> Bounds.keep_host(binary)
  end

  defp create(%T{type: type} = out, opts, op, args, callback) do
    device = device_option(opts)
    Types.native!(type, callback)
    queue = CommandQueue.resolve(device)
    wrap(out, Dispatch.run(queue, op, args, type), device, queue)
  end

  @doc false
  def device_option(opts), do: Keyword.get(opts, :device) || CommandQueue.default_device()

  defp number_arg(%Complex{re: re, im: im}), do: {re, im}
  defp number_arg(n), do: n

  ## Read-back, copies, inspection

  # A quantized tensor (EMLX.Quantization) has no dense data to read back.
  @impl true
  def to_binary(%T{data: %__MODULE__{quantization_config: %{}}} = t, _limit),
    do: EMLX.Quantization.no_dense!(t, "to_binary")

  def to_binary(%T{type: type, data: %__MODULE__{} = data} = t, limit) do
    bytes = min(limit, flat_size(t)) * Types.elem_bytes(type)
    %__MODULE__{ref: ref, queue: queue} = realize(data)
    EMLX.GC.before_eval(queue)

    :telemetry.span([:emlx, :to_binary], %{bytes: bytes}, fn ->
      {NIF.to_binary(queue, ref, bytes) |> Worker.await(), %{bytes: bytes}}
    end)
  end

  @impl true
  def inspect(%T{data: %__MODULE__{quantization_config: %{} = c}}, _opts),
    do: EMLX.Quantization.inspect_config(c)

  def inspect(%T{} = tensor, inspect_opts) do
    size = flat_size(tensor)
    limit = if inspect_opts.limit == :infinity, do: size, else: inspect_opts.limit + 1
    binary = to_binary(tensor, min(limit, size))
    Nx.Backend.inspect(tensor, binary, inspect_opts)
  end

  @impl true
  def backend_copy(%T{data: %__MODULE__{quantization_config: %{}}} = t, backend, opts),
    do: EMLX.Quantization.copy(t, backend, opts)

  def backend_copy(%T{data: %__MODULE__{} = data} = tensor, EMLX.Backend, opts) do
    device = Keyword.get(opts, :device, data.device)

    if device == data.device do
      # Arrays are immutable: a new handle on the same array is a copy
      # that can be deallocated on its own.
      %{tensor | data: cast_data(data, tensor.type)}
    else
      from_binary(tensor, to_binary(tensor, flat_size(tensor)), device: device)
    end
  end

  def backend_copy(%T{} = tensor, backend, opts) do
    backend.from_binary(tensor, to_binary(tensor, flat_size(tensor)), opts)
  end

  @impl true
  def backend_transfer(%T{data: %__MODULE__{device: device}} = tensor, EMLX.Backend, opts) do
    if Keyword.get(opts, :device, device) == device do
      tensor
    else
      copy = backend_copy(tensor, EMLX.Backend, opts)
      backend_deallocate(tensor)
      copy
    end
  end

  def backend_transfer(tensor, backend, opts) do
    copy = backend_copy(tensor, backend, opts)
    backend_deallocate(tensor)
    copy
  end

  @impl true
  def backend_deallocate(%T{data: %__MODULE__{ref: ref}}) when is_reference(ref),
    do: NIF.deallocate(ref)

  # a placeholder of a recording owns no memory yet
  def backend_deallocate(%T{data: %__MODULE__{}}), do: :ok

  # Batches as slices of the tensor (and a concatenate for a repeated leftover).
  @impl true
  defdelegate to_batched(out, tensor, opts), to: EMLX.Backend.Batched

  ## Types and shapes

  @impl true
  def as_type(%T{type: type} = out, tensor), do: run(out, :as_type, [tensor, type], nil)

  defp cast(%T{type: type} = tensor, type), do: tensor
  defp cast(tensor, type), do: as_type(%{tensor | type: type}, tensor)

  @impl true
  def bitcast(%T{type: type} = out, tensor), do: run(out, :bitcast, [tensor, type], nil)

  @impl true
  def reshape(%T{shape: shape} = out, tensor), do: run(out, :reshape, [tensor, shape], nil)

  @impl true
  def squeeze(%T{shape: shape} = out, tensor, _axes), do: run(out, :reshape, [tensor, shape], nil)

  @impl true
  def broadcast(out, tensor, shape, axes), do: run(out, :broadcast, [tensor, shape, axes], nil)

  @impl true
  def transpose(out, tensor, axes), do: run(out, :transpose, [tensor, axes], nil)

  @impl true
  def pad(out, tensor, pad_value, config) do
    {lo, hi, interior} =
      Enum.reduce(Enum.reverse(config), {[], [], []}, fn {l, h, i}, {ls, hs, is} ->
        {[l | ls], [h | hs], [i | is]}
      end)

    run(out, :pad, [tensor, pad_value, lo, hi, interior])
  end

  @impl true
  def reverse(out, tensor, axes), do: run(out, :reverse, [tensor, axes], nil)

  @impl true
  def concatenate(out, tensors, axis), do: run(out, :concatenate, [tensors, axis])

  @impl true
  def stack(out, tensors, axis), do: run(out, :stack, [tensors, axis])

  @impl true
  def slice(out, %T{shape: shape} = tensor, starts, lengths, strides) do
    if Enum.all?(starts, &is_integer/1) do
      starts =
        [starts, Tuple.to_list(shape), lengths]
        |> Enum.zip_with(fn [s, dim, len] -> s |> max(0) |> min(max(dim - len, 0)) end)

      run(out, :slice, [tensor, starts, lengths, strides], nil)
    else
      run(out, :dynamic_slice, [tensor, index_tensors(starts, tensor), lengths, strides], nil)
    end
  end

  @impl true
  def put_slice(%T{type: type} = out, tensor, starts, slice) do
    tensor = cast(tensor, type)
    run(out, :put_slice, [tensor, slice, index_tensors(starts, tensor)])
  end

  # Start indices as scalar tensors on the target's backend.
  defp index_tensors(starts, %T{data: data}) do
    device = device_of(data)

    Enum.map(starts, fn
      %T{} = t ->
        t

      i when is_integer(i) ->
        Nx.tensor(i, type: {:s, 32}, backend: {EMLX.Backend, device: device})
    end)
  end

  defp device_of(%__MODULE__{device: device}), do: device
  defp device_of(_), do: CommandQueue.default_device()

  @impl true
  def select(out, pred, on_true, on_false), do: run(out, :select, [pred, on_true, on_false])

  @impl true
  def clip(out, tensor, min, max), do: run(out, :clip, [tensor, min, max])

  ## Element-wise and reductions: the op table's ops that are Nx.Backend callbacks

  callbacks = Nx.Backend.behaviour_info(:callbacks)

  for op <- EMLX.Ops.binary() -- [:atan2, :left_shift, :right_shift], {op, 3} in callbacks do
    @impl true
    def unquote(op)(out, a, b), do: run(out, unquote(op), [a, b])
  end

  # A negative shift amount the host has raises, as in Nx.BinaryBackend.
  for {op, direction} <- [left_shift: :left, right_shift: :right] do
    @impl true
    def unquote(op)(out, a, b),
      do: run(out, unquote(op), [a, Bounds.shift!(unquote(direction), b)])
  end

  @impl true
  defdelegate atan2(out, a, b), to: EMLX.Backend.Atan2

  for op <- EMLX.Ops.unary(), {op, 2} in callbacks do
    @impl true
    def unquote(op)(out, tensor), do: run(out, unquote(op), [tensor])
  end

  # Ops of signature (array, axes, keep_axes): sum, product, reduce_max, ...
  for op <- EMLX.Ops.with_signature("aIb"), {op, 3} in callbacks do
    @impl true
    def unquote(op)(out, %T{shape: shape} = tensor, opts) do
      axes = opts[:axes] || Nx.axes(shape)
      run(out, unquote(op), [tensor, axes, opts[:keep_axes] || false])
    end
  end

  for op <- [:argmax, :argmin] do
    @impl true
    def unquote(op)(out, tensor, opts) do
      tie_high = opts[:tie_break] == :high
      run(out, unquote(op), [tensor, opts[:axis], opts[:keep_axis] || false, tie_high])
    end
  end

  ## Linear algebra, sorting, indexing

  # A quantized operand (EMLX.Quantization): mx::quantized_matmul or a
  # dequantized dot.
  @impl true
  def dot(out, %T{data: %__MODULE__{quantization_config: %{}}} = a, ca, ba, b, cb, bb),
    do: EMLX.Quantization.dot(out, a, ca, ba, b, cb, bb)

  def dot(out, a, ca, ba, %T{data: %__MODULE__{quantization_config: %{}}} = b, cb, bb),
    do: EMLX.Quantization.dot(out, a, ca, ba, b, cb, bb)

  def dot(out, a, contract_a, batch_a, b, contract_b, batch_b),
    do: run(out, :dot, [a, contract_a, batch_a, b, contract_b, batch_b])

  @impl true
  def sort(out, tensor, opts),
    do: run(out, :sort, [tensor, opts[:axis], opts[:direction] == :desc, true], nil)

  @impl true
  def argsort(out, tensor, opts),
    do: run(out, :argsort, [tensor, opts[:axis], opts[:direction] == :desc, true])

  @impl true
  def gather(out, tensor, indices, opts),
    do: run(out, :gather, [tensor, Bounds.indices!(tensor, indices, opts[:axes]), opts[:axes]])

  @impl true
  def indexed_add(out, tensor, indices, updates, opts),
    do: indexed(out, :indexed_add, tensor, indices, updates, opts)

  @impl true
  def indexed_put(out, tensor, indices, updates, opts),
    do: indexed(out, :indexed_put, tensor, indices, updates, opts)

  defp indexed(%T{type: type} = out, op, tensor, indices, updates, opts) do
    indices = Bounds.indices!(tensor, indices, opts[:axes])
    run(out, op, [cast(tensor, type), indices, updates, opts[:axes]])
  end

  ## Blocks: native where MLX has the op, else Nx's own composition (run on EMLX)

  @impl true
  def block(%Nx.Block.CumulativeSum{axis: axis, reverse: reverse}, out, [t | _], _fun),
    do: run(out, :cumulative_sum, [t, axis, reverse])

  def block(%Nx.Block.CumulativeProduct{axis: axis, reverse: reverse}, out, [t | _], _fun),
    do: run(out, :cumulative_product, [t, axis, reverse])

  def block(%Nx.Block.CumulativeMax{axis: axis, reverse: reverse}, out, [t | _], _fun),
    do: run(out, :cumulative_max, [t, axis, reverse])

  def block(%Nx.Block.CumulativeMin{axis: axis, reverse: reverse}, out, [t | _], _fun),
    do: run(out, :cumulative_min, [t, axis, reverse])

  def block(%Nx.Block.Take{axis: axis}, out, [t, indices | _], _fun),
    do: run(out, :take, [t, indices, axis], nil)

  def block(%Nx.Block.TakeAlongAxis{axis: axis}, out, [t, indices | _], _fun),
    do: run(out, :take_along_axis, [t, indices, axis], nil)

  def block(%mod{} = struct, out, args, fun) when mod in @linalg_blocks do
    case LinAlg.plan(struct, args) do
      {:one, op, op_args} -> run(out, op, op_args)
      {:multi, op, op_args} -> run_multi(out, op, op_args)
      :nx -> LinAlg.nx(struct, args, fun)
    end
  end

  # EMLX.Fast: one fused MLX op where MLX's kernels take the types (no f64);
  # an op of several results gives them in their templates' types.
  def block(%EMLX.Fast.Block{} = struct, out, args, fun) do
    types = [out] |> Nx.Defn.Composite.flatten_list() |> Enum.map(& &1.type)

    if Enum.all?(types, &(&1 in [{:f, 32}, {:f, 16}, {:bf, 16}])) and
         Enum.all?(args, fn %T{type: t} -> t != {:f, 64} and elem(t, 0) != :c end) do
      op_args = EMLX.Fast.Block.op_args(struct, args)

      if is_tuple(out),
        do: run_multi(out, struct.op, op_args, false),
        else: run(out, struct.op, op_args)
    else
      apply(fun, [struct | args])
    end
  end

  # EMLX.Distributed: one op of the program being recorded, else run on the group's queue.
  def block(%EMLX.Distributed.Block{op: op, args: extra} = b, out, [t], _fun) do
    if EMLX.Defn.Recorder.active?(),
      do: run(out, op, [t | extra]),
      else: EMLX.Distributed.run_block(b, t)
  end

  def block(struct, _out, args, fun), do: apply(fun, [struct | args])

  ## Convolution, windows and reductions with a function

  @impl true
  def conv(out, tensor, kernel, opts) do
    {lo, hi} = Enum.unzip(opts[:padding])

    run(out, :conv, [
      tensor,
      kernel,
      opts[:strides],
      lo,
      hi,
      opts[:input_dilation],
      opts[:kernel_dilation],
      opts[:feature_group_size],
      opts[:batch_group_size],
      opts[:input_permutation],
      opts[:kernel_permutation],
      opts[:output_permutation]
    ])
  end

  for {op, kind} <- [window_sum: 0, window_product: 1, window_max: 2, window_min: 3] do
    @impl true
    def unquote(op)(%T{type: type} = out, tensor, window, opts) do
      tensor = cast(tensor, type)
      {lo, hi} = Enum.unzip(opts[:padding])
      args = [tensor, unquote(kind), window, opts[:strides], lo, hi, opts[:window_dilations]]
      run(out, :window_reduce, args)
    end
  end

  for {op, is_max} <- [window_scatter_max: true, window_scatter_min: false] do
    @impl true
    def unquote(op)(out, tensor, source, init_value, window, opts) do
      {lo, hi} = Enum.unzip(opts[:padding])
      args = [tensor, source, init_value, unquote(is_max), window, opts[:strides], lo, hi]
      run(out, :window_scatter, args)
    end
  end

  # Reductions with a function: composed from MLX ops (EMLX.Backend.Fold).
  @impl true
  defdelegate reduce(out, tensor, acc, opts, fun), to: EMLX.Backend.Fold

  @impl true
  def window_reduce(out, tensor, acc, window, opts, fun) do
    {lo, hi} = Enum.unzip(opts[:padding])
    args = [tensor, acc, window, opts[:strides], lo, hi, opts[:window_dilations]]
    windows = run(Fold.windows_template(out, tensor, window), :windows, args, nil)
    Fold.window_reduce(out, windows, acc, fun)
  end

  ## FFT

  @impl true
  def fft(out, tensor, opts), do: fft(out, tensor, opts, false)

  @impl true
  def ifft(out, tensor, opts), do: fft(out, tensor, opts, true)

  defp fft(%T{shape: shape} = out, tensor, opts, inverse) do
    axis = opts[:axis] || tuple_size(shape) - 1
    run(out, :fft, [tensor, opts[:length], axis, inverse, opts[:eps] || 0.0])
  end

  ## Linear algebra

  @impl true
  def triangular_solve(out, a, b, opts) do
    args = [a, b, opts[:left_side], opts[:lower], opts[:transform_a] == :transpose]
    result = run(out, :triangular_solve, args)
    # Nx raises on a singular matrix where the call is made: wait for the
    # worker's check instead of letting the error surface at a later read.
    with %__MODULE__{ref: ref} when is_reference(ref) <- result.data, do: Worker.info(ref)
    result
  end

  ## Pointers (EMLX.Backend.Pointer)

  @impl true
  defdelegate to_pointer(tensor, opts), to: EMLX.Backend.Pointer

  @impl true
  defdelegate from_pointer(pointer, type, shape, backend_opts, opts), to: EMLX.Backend.Pointer

  ## Running ops

  # Runs `op` for the output template `out`: picks the device and queue, brings
  # every tensor argument there, wraps the result (cast to `out.type` unless nil).
  defp run(%T{type: type} = out, op, args, cast \\ :out) do
    Types.native!(type, op)

    case one_queue(args) do
      # the common eager case, without the general path's list walks
      {raw, device, queue} ->
        if CommandQueue.resolve(device) == queue,
          do: post(out, op, raw, device, queue, cast),
          else: run_any(out, op, args, cast)

      nil ->
        run_any(out, op, args, cast)
    end
  end

  # One or two arrays of one queue: their handles, device and queue.
  defp one_queue([%T{data: %__MODULE__{ref: r, device: d, queue: q}}]) when is_reference(r),
    do: {[r], d, q}

  defp one_queue([
         %T{data: %__MODULE__{ref: r1, device: d, queue: q}},
         %T{data: %__MODULE__{ref: r2, queue: q}}
       ])
       when is_reference(r1) and is_reference(r2),
       do: {[r1, r2], d, q}

  defp one_queue(_), do: nil

  defp run_any(out, op, args, cast) do
    device = args_device(args)
    queue = CommandQueue.resolve(device)
    post(out, op, Enum.map(args, &arg_on(&1, device, queue)), device, queue, cast)
  end

  defp post(%T{type: type} = out, op, raw, device, queue, cast) do
    handle = Dispatch.run(queue, op, raw, if(cast == :out, do: type, else: cast))
    EMLX.GC.produced(out, op, handle)
    wrap(out, handle, device, queue)
  end

  # Ops with several results: each is cast to its template's type.
  defp run_multi(outs, op, args, cast? \\ true) when is_tuple(outs) do
    templates = Tuple.to_list(outs)
    [%T{type: type} | _] = templates
    device = args_device(args)
    Types.native!(type, op)
    queue = CommandQueue.resolve(device)
    raw = Enum.map(args, &arg_on(&1, device, queue))
    handles = Dispatch.run(queue, op, raw, nil)

    templates
    |> Enum.zip_with(handles, fn %T{type: t} = template, handle ->
      handle = if cast?, do: Dispatch.run(queue, :as_type, [handle, t], nil), else: handle
      wrap(template, handle, device, queue)
    end)
    |> List.to_tuple()
  end

  @doc false
  # EMLX.Quantization's ops (and EMLX.Backend.Atan2's): one result for `out`
  # (cast to its type when `cast` is :out), or a tuple of templates.
  def run_quantization(out, op, args, cast \\ nil)

  def run_quantization(out, op, args, _cast) when is_tuple(out),
    do: run_multi(out, op, args, false)

  def run_quantization(out, op, args, cast), do: run(out, op, args, cast)

  @doc false
  # The handle of a tensor on `queue`, transferring or evaluating as needed.
  def ref_on(%T{type: type} = t, _device, _queue) when emulated_tensor(t),
    do: Types.native!(type, "an MLX array argument")

  def ref_on(%T{} = t, device, queue), do: arg_on(t, device, queue)

  @doc false
  # Backend data for a handle (see EMLX.Dispatch): a real array goes into
  # `ref`, a recorder placeholder into `placeholder`.
  def data(ref, device, queue) when is_reference(ref),
    do: %__MODULE__{ref: ref, device: device, queue: queue}

  def data(placeholder, device, queue),
    do: %__MODULE__{placeholder: placeholder, device: device, queue: queue}

  @doc false
  # The handle ops take for this data: the array, or its placeholder.
  def handle(%__MODULE__{ref: nil, placeholder: placeholder}), do: placeholder
  def handle(%__MODULE__{ref: ref}), do: ref

  @doc false
  # The data with a real array (a placeholder is materialized first).
  def realize(%__MODULE__{ref: nil, placeholder: placeholder} = data),
    do: %{data | ref: Dispatch.materialize(placeholder), placeholder: nil}

  def realize(%__MODULE__{ref: ref} = data) when node(ref) == node(), do: data

  # An MLX array lives in its node's memory: a tensor sent to another node
  # (by a message, or through Nx.Serving without distributed_preprocessing)
  # holds a reference that means nothing here.
  def realize(%__MODULE__{ref: ref}) do
    raise ArgumentError,
          "EMLX: this tensor was made on node #{node(ref)}, and its MLX array stays in " <>
            "that node's memory; copy it to Nx.BinaryBackend there before sending it " <>
            "(Nx.backend_transfer/2, or Nx.Serving's distributed_preprocessing and " <>
            "distributed_postprocessing)"
  end

  defp wrap(out, handle, device, queue), do: %{out | data: data(handle, device, queue)}

  defp args_device(args) do
    Enum.find_value(args, fn
      %T{data: %__MODULE__{device: device}} -> device
      [%T{} | _] = list -> Enum.find_value(list, &tensor_device/1)
      _ -> nil
    end) || CommandQueue.default_device()
  end

  defp tensor_device(%T{data: %__MODULE__{device: device}}), do: device
  defp tensor_device(_), do: nil

  defp arg_on(%T{data: %__MODULE__{queue: queue} = data}, _device, queue), do: handle(data)

  defp arg_on(%T{data: %__MODULE__{} = data}, _device, _queue) do
    # MLX streams are thread-local: an array not yet computed is evaluated
    # on its own queue first (a round trip to that queue's worker).
    %__MODULE__{ref: ref, queue: other} = realize(data)
    unless NIF.array_available(ref), do: NIF.eval(other, [ref]) |> Worker.await()
    ref
  end

  # (a vectorized tensor of another backend, a defn argument, moves whole:
  # its binary holds the vectorized axes too)
  defp arg_on(%T{type: type} = t, _device, queue) do
    Types.native!(type, :backend_transfer)
    %T{shape: shape} = Nx.devectorize(t, keep_names: false)
    Worker.from_binary(queue, Nx.to_binary(t), shape, type)
  end

  defp arg_on(list, device, queue) when is_list(list) do
    if Enum.all?(list, &match?(%T{}, &1)),
      do: Enum.map(list, &arg_on(&1, device, queue)),
      else: list
  end

  defp arg_on(other, _device, _queue), do: other

  # Elements of the whole array, vectorized axes included.
  defp flat_size(%T{shape: shape, vectorized_axes: vectorized}),
    do: Enum.reduce(vectorized, Tuple.product(shape), fn {_, n}, acc -> acc * n end)
end
