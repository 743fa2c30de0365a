defmodule EMLX.NIF do
  @moduledoc """
  The native functions of EMLX (C11 NIF over a C++ shim of MLX): stubs
  only, replaced by the NIF library when it loads.

  Functions that do MLX work (`op/4`, `from_binary/4`, `to_binary/3`,
  `eval/2`, `queue_sync/1`, ...) post a job to the command queue's worker
  thread and return at once: `op/4` and `program_post/4` with their
  results, pending until the worker makes them (so does `from_binary/4`,
  except that a small binary for a CPU queue is made into its array
  before it returns); the others with a job whose result arrives as the
  message `{ref, result}`, which `EMLX.Worker.await/1` receives. No BEAM scheduler
  waits on MLX. `EMLX.Worker` also holds the calls that wait for pending
  arrays (`EMLX.Worker.info/1`) and for a deep queue (`EMLX.Worker.run_op/4`).

  Bad terms raise `ArgumentError` in the NIF itself, before MLX sees them;
  an exception thrown by MLX arrives as an error reply and
  `EMLX.Worker.await/1` raises `EMLX.NIFError` with MLX's message.
  """

  @typedoc "A command queue: a worker thread and its MLX stream."
  @type queue :: reference()
  @typedoc "An MLX array."
  @type array :: reference()
  @typedoc "A posted job; its reply is awaited with `EMLX.Worker.await/1`."
  @type job :: reference() | {:emlx_done, term()}
  @type device :: :cpu | :gpu
  @typedoc "An Nx type, or `:bool` (MLX's boolean) where MLX reports types."
  @type type :: EMLX.Types.mlx_type()

  @on_load :__load__

  @doc false
  # Loads priv/libemlx.so; on failure returns a message naming the library
  # and the reason (the VM logs it, and every stub raises :nif_not_loaded).
  def __load__ do
    case :code.priv_dir(:emlx) do
      {:error, reason} ->
        {:error, ~c"EMLX: no priv directory for :emlx (#{reason}), where libemlx.so is built"}

      priv ->
        path = :filename.join(priv, ~c"libemlx")

        case :erlang.load_nif(path, tf32()) do
          :ok ->
            :ok

          {:error, {reason, text}} ->
            {:error,
             ~c"EMLX could not load its NIF library #{path}.so (#{reason}): #{text}. " ++
               hint(to_string(text))}
        end
    end
  end

  # MLX's CUDA backend runs f32 matmul and conv in TF32 unless
  # MLX_ENABLE_TF32=0, read once per process. Nx means full f32, the default
  # (`config :emlx, :matmul_precision, :highest`); `:tf32` trades precision
  # for speed. An MLX_ENABLE_TF32 already in the environment wins. Set here,
  # before libmlx loads, and by the NIF's load (its argument); no effect on
  # the CPU.
  defp tf32 do
    value =
      case Application.get_env(:emlx, :matmul_precision, :highest) do
        :highest -> ~c"0"
        :tf32 -> ~c"1"
        _other -> ~c"0"
      end

    if System.get_env("MLX_ENABLE_TF32") in [nil, ""],
      do: System.put_env("MLX_ENABLE_TF32", List.to_string(value))

    System.get_env("MLX_ENABLE_TF32") |> String.to_charlist()
  end

  # A CUDA build of libmlx needs NVIDIA's libraries from the host: name the
  # missing one and where EMLX's libmlx looks for it.
  defp hint(text) do
    case Regex.run(~r/(lib(cu|nv|nccl)[\w.+-]*\.so[.\d]*): cannot open shared object file/, text) do
      [_, "libcuda.so" <> _ = lib | _] ->
        ~c"The CUDA build of MLX needs #{lib}, which comes with the NVIDIA driver: " ++
          ~c"this host has no NVIDIA driver (or it is not on the library path)."

      [_, lib | _] ->
        ~c"The CUDA build of MLX needs NVIDIA's #{lib}, which was not found. " ++
          ~c"libmlx looks in priv/libmlx/nvidia/*/lib (link the nvidia folder of a Python " ++
          ~c"site-packages holding NVIDIA's CUDA 13 pip packages there), then on LD_LIBRARY_PATH " ++
          ~c"and the system's library path (see README.md, 'GPU')."

      nil ->
        ~c"Build it with `mix compile` (it needs libmlx; see README.md, 'Set-up')."
    end
  end

  ## Command queues

  @doc """
  Starts a worker thread with a new MLX stream on `device`; `run_ahead` is
  its eager-op count between background evals (0: off; -1: the default,
  see `EMLX.CommandQueue.new/2`).
  """
  @spec queue_new(device, integer()) :: {:ok, queue} | {:error, charlist()}
  def queue_new(_device, _run_ahead), do: :erlang.nif_error(:nif_not_loaded)

  @doc "The device of a queue."
  @spec queue_device(queue) :: device
  def queue_device(_queue), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts a barrier that synchronizes the queue's stream."
  @spec queue_sync(queue) :: job
  def queue_sync(_queue), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Posts a barrier that replies once the worker has run every job posted
  before it, without waiting for the device to finish their work.
  """
  @spec queue_drain(queue) :: job
  def queue_drain(_queue), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Whether every job posted to the queue is done (a snapshot)."
  @spec queue_idle(queue) :: boolean()
  def queue_idle(_queue), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  For a caller told to wait (`{:wait, result}`): `:ok` when the queue's
  depth is at its low mark already, else a reference `ref`, and
  `{ref, :ok}` is sent once the worker has brought the depth down to it.
  """
  @spec queue_wait_low(queue) :: :ok | reference()
  def queue_wait_low(_queue), do: :erlang.nif_error(:nif_not_loaded)

  ## Ops and programs

  @doc "The op table: `[{name, signature}]` (see `EMLX.Ops`)."
  @spec op_list() :: [{atom(), charlist()}]
  def op_list, do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Posts op `name` (see `op_list/0`) with its argument list, casting results
  to `out_type` unless nil. Returns the result array(s) at once, pending:
  the worker computes them in queue order, and an MLX error is raised by
  the first read of the array (or of any array computed from it). Returns
  `{:wait, result}` when the queue is deep, asking the caller to wait
  (`EMLX.Worker.run_op/4` does).
  """
  @spec op(queue, atom(), list(), Nx.Type.t() | nil) ::
          array | [array] | {:wait, array | [array]}
  def op(_queue, _name, _args, _out_type), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Decodes a program: `[{op, args, out_type}]` over slots (array args are slot numbers), its input count and output slots."
  @spec program_new(queue, [{atom(), list(), Nx.Type.t() | nil}], non_neg_integer(), [
          non_neg_integer()
        ]) :: reference()
  def program_new(_queue, _instrs, _ninputs, _out_slots), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts a run of a program on its queue; `compile` runs it under mx::compile."
  @spec program_run(queue, reference(), [array], boolean()) :: job
  def program_run(_queue, _program, _inputs, _compile), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Posts a run of a program and returns its outputs at once, pending (filled
  by the worker in queue order, as an op's results are); `{:wait, outputs}`
  when the queue is deep enough that the caller should wait for it.
  """
  @spec program_post(queue, reference(), [array], boolean()) :: [array] | {:wait, [array]}
  def program_post(_queue, _program, _inputs, _compile), do: :erlang.nif_error(:nif_not_loaded)

  ## Data in and out

  @doc """
  A new array holding a copy of a binary: made at once from a binary of up
  to 64 KiB for a CPU queue; otherwise posted, and returned pending.
  """
  @spec from_binary(queue, binary(), tuple(), Nx.Type.t()) :: array | {:wait, array}
  def from_binary(_queue, _binary, _shape, _type), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts evaluation and read-back of up to `limit_bytes` of an array."
  @spec to_binary(queue, array, non_neg_integer()) :: job
  def to_binary(_queue, _array, _limit_bytes), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts `mx::async_eval` of a list of arrays: no reply (`:ok` at once)."
  @spec async_eval(queue, [array]) :: :ok
  def async_eval(_queue, _arrays), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts the evaluation of a list of arrays."
  @spec eval(queue, [array]) :: job
  def eval(_queue, _arrays), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts making the array contiguous and returning `{address, bytes}` (`:local`) or a new shm segment `{name, bytes}` (`:ipc`)."
  @spec to_pointer(queue, array, :local | :ipc, non_neg_integer()) :: job
  def to_pointer(_queue, _array, _mode, _permissions), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts a copy of memory at an address (integer) or in a named shm segment (binary) into a new array."
  @spec from_pointer(queue, non_neg_integer() | binary(), tuple(), Nx.Type.t()) :: job
  def from_pointer(_queue, _address_or_name, _shape, _type),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc "Unlinks a POSIX shared-memory segment; a missing one is fine."
  @spec shm_unlink(binary()) :: :ok
  def shm_unlink(_name), do: :erlang.nif_error(:nif_not_loaded)

  ## Files

  @doc """
  Posts reading a `.safetensors` file with MLX's loader; the reply is
  `{[{name, array}], [{key, value}]}` (arrays evaluated, metadata strings).
  """
  @spec load_safetensors(queue, binary()) :: job
  def load_safetensors(_queue, _path), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts writing `[{name, array}]` and `[{key, value}]` metadata to a `.safetensors` file."
  @spec save_safetensors(queue, binary(), [{binary(), array}], [{binary(), binary()}]) :: job
  def save_safetensors(_queue, _path, _arrays, _metadata), do: :erlang.nif_error(:nif_not_loaded)

  ## Arrays

  @doc "`{shape, type, owner_queue}` of an array, or `{:pending, owner_queue}` before it is computed."
  @spec array_info(array) :: {tuple(), type, queue} | {:pending, queue}
  def array_info(_array), do: :erlang.nif_error(:nif_not_loaded)

  @doc "The strides (in elements) of an array, or `{:pending, owner_queue}` before it is computed."
  @spec array_strides(array) :: tuple() | {:pending, queue}
  def array_strides(_array), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Whether an array is computed (false while pending, failed or deallocated)."
  @spec array_available(array) :: boolean()
  def array_available(_array), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Whether an array's computation has started (an eval, `EMLX.async_eval/1`
  or the worker's run-ahead took it) or is done; false for a lazy one.
  """
  @spec array_scheduled(array) :: boolean()
  def array_scheduled(_array), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  An integer array's values when it is computed and readable on the host as
  it stands (at most `max` of them; on the GPU only arrays of up to 8
  bytes), else nil. Never waits.
  """
  @spec host_ints(array, non_neg_integer()) :: [integer()] | nil
  def host_ints(_array, _max), do: :erlang.nif_error(:nif_not_loaded)

  @doc "The strides of an array, waiting for a pending one (`EMLX.Worker.strides/1`)."
  @spec strides(array) :: tuple()
  defdelegate strides(array), to: EMLX.Worker

  @doc "Drops the array's data now: `:ok` or `:already_deallocated`."
  @spec deallocate(array) :: :ok | :already_deallocated
  def deallocate(_array), do: :erlang.nif_error(:nif_not_loaded)

  ## Devices, memory and version

  @doc "Whether MLX can run on the device in this build."
  @spec device_available(device) :: boolean()
  def device_available(_device), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  @spec memory_info() :: %{
          active_memory: non_neg_integer(),
          peak_memory: non_neg_integer(),
          cache_memory: non_neg_integer()
        }
  def memory_info, do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Returns a reference `ref`; `{ref, :swept}` arrives once the resource
  destructors this scheduler had queued (those of a garbage collection
  just done by the caller) have run. See `EMLX.GC`.
  """
  @spec sweep_barrier() :: reference()
  def sweep_barrier, do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  @spec reset_peak_memory() :: :ok
  def reset_peak_memory, do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  @spec clear_cache() :: :ok
  def clear_cache, do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  @spec set_cache_limit(non_neg_integer()) :: non_neg_integer()
  def set_cache_limit(_limit), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  @spec set_memory_limit(non_neg_integer()) :: non_neg_integer()
  def set_memory_limit(_limit), do: :erlang.nif_error(:nif_not_loaded)

  @doc "The version of the libmlx EMLX runs on."
  @spec mlx_version() :: charlist()
  def mlx_version, do: :erlang.nif_error(:nif_not_loaded)
end
