defmodule EMLX do
  @moduledoc """
  EMLX is the Nx backend for Apple's MLX array library, on Linux CPU (and
  CUDA GPU builds of MLX).

      Nx.default_backend(EMLX.Backend)
      Nx.default_backend({EMLX.Backend, device: :cpu})

  or in configuration:

      config :nx, :default_backend, {EMLX.Backend, device: :cpu}

  `EMLX` is also an `Nx.Defn.Compiler` (see `EMLX.Defn`):

      Nx.Defn.default_options(compiler: EMLX)

  MLX work runs on dedicated OS threads, one per `EMLX.CommandQueue`, never
  on BEAM schedulers. Results come back to the calling process as messages.

  The functions in this module work on *device refs*: `{device, ref}` pairs
  naming an MLX array on a device. `EMLX.Backend.from_nx/1` and `to_nx/1`
  convert between them and `Nx.Tensor`s.
  """

  alias EMLX.{NIF, Worker}

  @behaviour Nx.Defn.Compiler

  @impl Nx.Defn.Compiler
  defdelegate __jit__(key, vars, fun, args_list, opts), to: EMLX.Defn
  @impl Nx.Defn.Compiler
  defdelegate __compile__(key, vars, fun, opts), to: EMLX.Defn
  @impl Nx.Defn.Compiler
  defdelegate __partitions_options__(opts), to: EMLX.Defn
  @impl Nx.Defn.Compiler
  defdelegate __to_backend__(opts), to: EMLX.Defn
  @impl Nx.Defn.Compiler
  defdelegate __shard_jit__(key, mesh, vars, fun, args_list, opts), to: EMLX.Defn

  @type device :: :cpu | :gpu
  @type device_ref :: {device, reference()}

  ## Devices and queues

  @doc """
  Returns the default MLX device for this process (see
  `EMLX.CommandQueue.default_device/0`).

      Application.put_env(:emlx, :default_device, :cpu)
  """
  @spec default_device() :: device
  defdelegate default_device, to: EMLX.CommandQueue

  @doc """
  Returns the command queue (worker) reference that work for `device` runs
  on: the queue bound with `EMLX.CommandQueue.with_queue/2`, else the
  device's application-default queue (see `EMLX.CommandQueue.resolve/1`
  for the cross-device rules).
  """
  @spec resolve_worker(device) :: reference()
  defdelegate resolve_worker(device), to: EMLX.CommandQueue, as: :resolve

  ## Evaluation and read-back

  @doc """
  Evaluates (possibly lazy) MLX tensors on their command queues and waits
  for them. Accepts an `Nx.Tensor` on `EMLX.Backend`, a device ref, or any
  Nx container of tensors (a tuple, map or list, e.g. a `defn`'s outputs):
  the tensors of one queue are evaluated together, in one round trip per
  queue. Tensors of other backends are left as they are.
  """
  def eval(%Nx.Tensor{data: %EMLX.Backend{} = data} = tensor) do
    %EMLX.Backend{ref: ref, queue: queue, device: device} = EMLX.Backend.realize(data)
    eval_on(queue, device, [ref])
    tensor
  end

  def eval({device, ref} = device_ref) when is_reference(ref) do
    eval_on(resolve_worker(device), device, [ref])
    device_ref
  end

  def eval(container) when is_tuple(container) or is_map(container) or is_list(container) do
    container
    |> refs_by_queue()
    |> Enum.each(fn {{queue, device}, refs} -> eval_on(queue, device, refs) end)

    container
  end

  @doc """
  Starts evaluating tensors (as `eval/1` takes them) and returns at once
  (MLX's `async_eval`): the device computes while the caller goes on, e.g.
  posting the next step of a decode loop; a later read or `eval/1` waits
  for the result, and raises any error of the computation.
  """
  def async_eval(container) do
    container
    |> refs_by_queue()
    |> Enum.each(fn {{queue, _device}, refs} -> :ok = NIF.async_eval(queue, refs) end)

    container
  end

  # The arrays of a container's EMLX tensors, by {queue, device}.
  defp refs_by_queue(container) do
    if(is_list(container), do: container, else: [container])
    |> Nx.Defn.Composite.flatten_list()
    |> Enum.flat_map(fn
      %Nx.Tensor{data: %EMLX.Backend{} = data} -> [EMLX.Backend.realize(data)]
      _other -> []
    end)
    |> Enum.group_by(&{&1.queue, &1.device}, & &1.ref)
  end

  defp eval_on(queue, device, refs) do
    EMLX.GC.before_eval(queue)

    :telemetry.span([:emlx, :eval], %{device: device}, fn ->
      {NIF.eval(queue, refs) |> Worker.await(), %{device: device}}
    end)

    EMLX.Telemetry.memory_stats()
  end

  @doc "Reads the whole tensor back as a binary (evaluating it first)."
  def to_blob({device, ref}), do: to_blob({device, ref}, :infinity)

  @doc "Reads at most `limit` elements of the tensor back as a binary."
  def to_blob({device, ref}, limit) do
    {_shape, type, _owner} = Worker.info(ref)

    bytes =
      if limit == :infinity, do: 0xFFFFFFFFFFFFFFFF, else: limit * EMLX.Types.elem_bytes(type)

    NIF.to_binary(resolve_worker(device), ref, bytes) |> Worker.await()
  end

  @doc "Returns the value of a one-element tensor as a number."
  def item({_device, ref} = device_ref) do
    {_shape, type, _owner} = Worker.info(ref)
    type = EMLX.Types.to_nx(type)
    size = EMLX.Types.elem_bytes(type)

    case to_blob(device_ref) do
      binary when byte_size(binary) == size ->
        binary
        |> Nx.from_binary(type, backend: Nx.BinaryBackend)
        |> Nx.reshape({})
        |> Nx.to_number()

      _ ->
        raise ArgumentError, "item/1 expects a tensor with exactly one element"
    end
  end

  @doc "Converts a device ref into an `Nx.Tensor` on `EMLX.Backend`."
  def to_nx({device, ref}) when is_reference(ref), do: EMLX.Backend.to_nx({device, ref})

  @doc "The shape of a device ref's array."
  def shape({_device, ref}), do: ref |> Worker.info() |> elem(0)

  @doc "The Nx type of a device ref's array (`:bool` for MLX booleans)."
  def scalar_type({_device, ref}), do: ref |> Worker.info() |> elem(1)

  @doc "The strides of a device ref's array, in elements."
  def strides({_device, ref}), do: Worker.strides(ref)

  @doc "Drops the array's memory now. Later use raises."
  def deallocate({_device, ref}), do: NIF.deallocate(ref)
  def deallocate(ref) when is_reference(ref), do: NIF.deallocate(ref)

  @doc "Whether `term` is a device ref."
  defmacro is_tensor(device, ref) do
    quote do
      unquote(device) in [:cpu, :gpu] and is_reference(unquote(ref))
    end
  end

  ## Pointers and shared memory

  @doc """
  Returns `{address, byte_size}` of the tensor's buffer. Evaluates the
  tensor and makes it row-contiguous first; the address stays valid while
  the tensor is referenced.
  """
  def tensor_data_ptr(%Nx.Tensor{} = t) do
    %Nx.Pointer{address: address, data_size: size} = EMLX.Backend.to_pointer(t, mode: :local)
    {address, size}
  end

  @doc """
  Copies the tensor into a new POSIX shared-memory segment with the given
  mode bits (e.g. `0o400`) and returns `{shm_name, byte_size}`. A memcpy is
  needed: MLX arrays are immutable. The receiver unlinks the segment when
  it opens it through `Nx.from_pointer/5`.
  """
  def tensor_to_shm(%Nx.Tensor{} = t, permissions \\ 0o400) do
    %Nx.Pointer{handle: name, data_size: size} =
      EMLX.Backend.to_pointer(t, mode: :ipc, permissions: permissions)

    {name, size}
  end

  @doc """
  Unlinks a POSIX shared-memory segment by its name. Call it when the
  receiver never opens an `%Nx.Pointer{kind: :ipc}`, or the segment stays
  until reboot. A segment already unlinked is fine.
  """
  def shm_unlink(name) when is_binary(name), do: NIF.shm_unlink(name)

  ## Memory

  @doc """
  Returns a map with current memory usage information.

    * `:active_memory` - bytes currently allocated and in use
    * `:peak_memory` - highest active memory since last reset
    * `:cache_memory` - bytes in the allocator cache (freed but not returned to the OS)

      iex> info = EMLX.memory_info()
      iex> is_integer(info.active_memory) and is_integer(info.peak_memory) and is_integer(info.cache_memory)
      true
  """
  def memory_info, do: NIF.memory_info()

  @doc "Resets the peak memory counter to zero."
  @spec reset_peak_memory() :: :ok
  def reset_peak_memory, do: NIF.reset_peak_memory()

  @doc """
  Clears the MLX memory cache, releasing unused memory back to the system.
  Tensors still referenced are not affected.
  """
  @spec clear_cache() :: :ok
  def clear_cache, do: NIF.clear_cache()

  @doc """
  Sets the cache limit in bytes and returns the previous limit. With 0 the
  allocator keeps no cache.
  """
  def set_cache_limit(limit) when is_integer(limit) and limit >= 0, do: NIF.set_cache_limit(limit)

  @doc """
  Sets the memory limit in bytes (a guideline for graph evaluation) and
  returns the previous limit.
  """
  def set_memory_limit(limit) when is_integer(limit) and limit >= 0,
    do: NIF.set_memory_limit(limit)

  ## Ops on device refs

  @doc """
  Runs op `name` of the op table (`EMLX.NIF.op_list/0`) on device refs and
  returns a device ref (or a list of them). Arrays in `args` are device refs.
  """
  def op(name, args, out_type \\ nil) do
    device = Enum.find_value(args, default_device(), &ref_device/1)
    op_on(device, name, args, out_type)
  end

  @doc "Like `op/3`, on the queue of the given device."
  def op_on(device, name, args, out_type \\ nil) do
    queue = resolve_worker(device)
    raw = Enum.map(args, &unwrap_arg/1)

    case Worker.run_op(queue, name, raw, out_type) do
      list when is_list(list) -> Enum.map(list, &{device, &1})
      ref -> {device, ref}
    end
  end

  defp ref_device({device, ref}) when device in [:cpu, :gpu] and is_reference(ref), do: device
  defp ref_device([first | _]), do: ref_device(first)
  defp ref_device(_), do: nil

  defp unwrap_arg({device, ref}) when device in [:cpu, :gpu] and is_reference(ref), do: ref
  defp unwrap_arg(list) when is_list(list), do: Enum.map(list, &unwrap_arg/1)
  defp unwrap_arg(other), do: other

  # One function per element-wise op of the op table (EMLX.Ops). The binary
  # max and min are named maximum/2 and minimum/2: max/3 and min/3 reduce.
  for name <- EMLX.Ops.unary() do
    @doc "Element-wise `#{name}` of a device ref."
    def unquote(name)(tensor), do: op(unquote(name), [tensor])
  end

  for op <- EMLX.Ops.binary() do
    name = Map.get(%{max: :maximum, min: :minimum}, op, op)
    @doc "Element-wise `#{name}` of two device refs."
    def unquote(name)(a, b), do: op(unquote(op), [a, b])
  end

  # Functions that run one op of the table on device refs:
  # {function, parameters, op, op arguments after the parameters, doc}.
  axes = ~w(tensor axes keep_axes)a
  along = ~w(tensor axis reverse)a

  for {name, params, op, extra, doc} <- [
        {:sum, axes, :sum, [], "Sum over `axes`."},
        {:product, axes, :product, [], "Product over `axes`."},
        {:max, axes, :reduce_max, [], "Maximum over `axes`."},
        {:min, axes, :reduce_min, [], "Minimum over `axes`."},
        {:all, axes, :all, [], "Whether all entries over `axes` are non-zero."},
        {:any, axes, :any, [], "Whether any entry over `axes` is non-zero."},
        {:argmax, ~w(tensor axis keep_axis)a, :argmax, [false],
         "Index of the maximum along `axis`."},
        {:argmin, ~w(tensor axis keep_axis)a, :argmin, [false],
         "Index of the minimum along `axis`."},
        {:reshape, ~w(tensor shape)a, :reshape, [], "Reshapes to `shape`."},
        {:transpose, ~w(tensor axes)a, :transpose, [], "Permutes the axes."},
        {:squeeze, ~w(tensor axes)a, :squeeze, [], "Removes the given size-1 axes."},
        {:broadcast_to, ~w(tensor shape)a, :broadcast_to, [], "Broadcasts to `shape`."},
        {:astype, ~w(tensor type)a, :as_type, [], "Casts to the Nx `type`."},
        {:view, ~w(tensor type)a, :bitcast, [], "Reinterprets the bytes as the Nx `type`."},
        {:where, ~w(pred on_true on_false)a, :select, [],
         "Selects from `on_true` where `pred` is non-zero, else from `on_false`."},
        {:clip, ~w(tensor min max)a, :clip, [], "Clips between two tensors."},
        {:concatenate, ~w(tensors axis)a, :concatenate, [], "Concatenates along `axis`."},
        {:stack, ~w(tensors axis)a, :stack, [], "Stacks along a new `axis`."},
        {:sort, ~w(tensor axis)a, :sort, [false, true], "Sorts along `axis`."},
        {:argsort, ~w(tensor axis)a, :argsort, [false, true], "Indices that sort along `axis`."},
        {:take, ~w(tensor indices axis)a, :take, [], "Takes `indices` along `axis`."},
        {:take_along_axis, ~w(tensor indices axis)a, :take_along_axis, [],
         "Takes along `axis` with indices of the same rank."},
        {:cumulative_sum, along, :cumulative_sum, [], "Cumulative sum along `axis`."},
        {:cumulative_product, along, :cumulative_product, [], "Cumulative product along `axis`."},
        {:cumulative_max, along, :cumulative_max, [], "Cumulative max along `axis`."},
        {:cumulative_min, along, :cumulative_min, [], "Cumulative min along `axis`."}
      ] do
    args = Enum.map(params, &Macro.var(&1, __MODULE__))
    @doc doc
    def unquote(name)(unquote_splicing(args)), do: op(unquote(op), unquote(args ++ extra))
  end

  @doc "A tensor of `shape` filled with `value`."
  def full(value, shape, type, device \\ default_device()),
    do: op_on(device, :full, [value, shape, type])

  @doc "A scalar tensor."
  def scalar_tensor(value, type, device \\ default_device()), do: full(value, {}, type, device)
  @doc "A tensor of ones."
  def ones(shape, type, device \\ default_device()), do: full(1, shape, type, device)
  @doc "An identity matrix of `m` rows and `n` columns."
  def eye(m, n, type, device \\ default_device()), do: op_on(device, :eye, [{m, n}, type])

  @doc "Builds a tensor from a binary blob."
  def from_blob(blob, shape, type, device \\ default_device()) do
    ref = Worker.from_binary(resolve_worker(device), blob, shape, type)
    {device, ref}
  end

  ## Safetensors files (see EMLX.SafeTensors)

  @doc """
  Reads a `.safetensors` file with MLX's loader into `%{name => tensor}`
  (element types as stored, bf16 and f16 included). Options: `:device`,
  `:metadata` (see `EMLX.SafeTensors.load/2`).
  """
  defdelegate load_safetensors(path, opts \\ []), to: EMLX.SafeTensors, as: :load

  @doc """
  Writes `%{name => tensor}` to a `.safetensors` file with MLX's writer.
  Options: `:metadata`, `:device` (see `EMLX.SafeTensors.save/3`).
  """
  defdelegate save_safetensors(path, tensors, opts \\ []), to: EMLX.SafeTensors, as: :save

  ## Affine quantization (see EMLX.Quantization)

  @doc "Quantizes a dense tensor: `EMLX.Quantization.quantize/2`."
  defdelegate quantize(tensor, opts), to: EMLX.Quantization

  @doc "The dense tensor of a quantized one: `EMLX.Quantization.dequantize/1`."
  defdelegate dequantize(qw), to: EMLX.Quantization

  @doc "`activation` times a quantized weight: `EMLX.Quantization.quantized_matmul/2`."
  defdelegate quantized_matmul(activation, qw), to: EMLX.Quantization

  @doc """
  `mx::quantize` (affine) of the float device ref `w` along its last axis:
  `[w_q, scales, biases]`, the packed u32 weights and the per-group scales
  and biases (device refs). `group_size` is 32, 64 or 128 and `bits` 2, 3,
  4, 5, 6 or 8.
  """
  def quantize(w, group_size, bits) do
    EMLX.Quantization.check_config!(group_size, bits)
    op(:quantize, [w, group_size, bits])
  end

  @doc "`mx::dequantize` (affine) of packed weights, scales and biases (device refs)."
  def dequantize(w, scales, biases, group_size, bits) do
    EMLX.Quantization.check_config!(group_size, bits)
    op(:dequantize, [w, scales, biases, group_size, bits])
  end

  @doc """
  `mx::quantized_matmul` (affine) of the device ref `x` and packed weights
  with their scales and biases: `x @ transpose(w)` when `transpose`
  (weights {out, in}), else `x @ w`.
  """
  def quantized_matmul(x, w, scales, biases, transpose \\ true, group_size \\ 64, bits \\ 4)
      when is_boolean(transpose) do
    EMLX.Quantization.check_config!(group_size, bits)
    op(:quantized_matmul, [x, w, scales, biases, transpose, group_size, bits])
  end
end
