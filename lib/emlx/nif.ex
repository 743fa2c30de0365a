defmodule EMLX.NIF do
  @moduledoc """
  The native functions of EMLX (C11 NIF over a C++ shim of MLX).

  Functions that do MLX work (`op/4`, `from_binary/4`, `to_binary/3`,
  `eval/2`, `queue_sync/1`) post a job to the command queue's worker
  thread and return a reference at once; the result arrives as the message
  `{ref, result}`, which `await/1` receives. No BEAM scheduler waits on MLX.

  Bad terms raise `ArgumentError` in the NIF itself, before MLX sees them;
  an exception thrown by MLX arrives as an error reply and `await/1` raises
  `EMLX.NIFError` with MLX's message.
  """

  @on_load :__load__

  @doc false
  def __load__ do
    path = :filename.join(:code.priv_dir(:emlx), ~c"libemlx")
    :erlang.load_nif(path, 0)
  end

  @doc "Starts a worker thread with a new MLX stream on `device`."
  def queue_new(_device), do: :erlang.nif_error(:nif_not_loaded)
  @doc "The device of a queue."
  def queue_device(_queue), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Decodes a program: `[{op, args, out_type}]` over slots (array args are slot numbers), its input count and output slots."
  def program_new(_queue, _instrs, _ninputs, _out_slots), do: :erlang.nif_error(:nif_not_loaded)
  @doc "Posts a run of a program on its queue; `compile` runs it under mx::compile."
  def program_run(_queue, _program, _inputs, _compile), do: :erlang.nif_error(:nif_not_loaded)
  @doc "Posts a barrier that synchronizes the queue's stream."
  def queue_sync(_queue), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Posts op `name` (see `op_list/0`) with its argument list, casting results
  to `out_type` unless nil. Returns the result array(s) at once, pending:
  the worker computes them in queue order, and an MLX error is raised by
  the first read of the array (or of any array computed from it). Returns
  `{:wait, result}` when the queue is deep, asking the caller to wait.
  """
  def op(_queue, _name, _args, _out_type), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Runs `op/4`, waiting for the worker to drain first when the queue is deep."
  def run_op(queue, name, args, out_type) do
    case op(queue, name, args, out_type) do
      {:wait, result} ->
        queue |> queue_sync() |> await()
        result

      result ->
        result
    end
  end

  @doc "`{shape, type, owner_queue}` of an array, waiting for a pending one."
  def info(array), do: when_computed(&array_info/1, array)

  @doc "The strides of an array, waiting for a pending one."
  def strides(array), do: when_computed(&array_strides/1, array)

  # A pending array is computed once its queue has drained up to now.
  defp when_computed(fun, array) do
    case fun.(array) do
      {:pending, owner} ->
        owner |> queue_sync() |> await()
        when_computed(fun, array)

      result ->
        result
    end
  end

  @doc "The op table: `[{name, signature}]`."
  def op_list, do: :erlang.nif_error(:nif_not_loaded)
  @doc "Posts the copy of a binary into a new array."
  def from_binary(_queue, _binary, _shape, _type), do: :erlang.nif_error(:nif_not_loaded)
  @doc "Posts evaluation and read-back of up to `limit_bytes` of an array."
  def to_binary(_queue, _array, _limit_bytes), do: :erlang.nif_error(:nif_not_loaded)
  @doc "Posts the evaluation of a list of arrays."
  def eval(_queue, _arrays), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts making the array contiguous and returning `{address, bytes}` (`:local`) or a new shm segment `{name, bytes}` (`:ipc`)."
  def to_pointer(_queue, _array, _mode, _permissions), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Posts a copy of memory at an address (integer) or in a named shm segment (binary) into a new array."
  def from_pointer(_queue, _address_or_name, _shape, _type),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc "Unlinks a POSIX shared-memory segment; a missing one is fine."
  def shm_unlink(_name), do: :erlang.nif_error(:nif_not_loaded)
  @doc "`{shape, type, owner_queue}` of an array."
  def array_info(_array), do: :erlang.nif_error(:nif_not_loaded)
  @doc "The strides (in elements) of an array."
  def array_strides(_array), do: :erlang.nif_error(:nif_not_loaded)
  @doc "Drops the array's data now: `:ok` or `:already_deallocated`."
  def deallocate(_array), do: :erlang.nif_error(:nif_not_loaded)
  @doc "Whether MLX can run on the device in this build."
  def device_available(_device), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def memory_info, do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def reset_peak_memory, do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def clear_cache, do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def set_cache_limit(_limit), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def set_memory_limit(_limit), do: :erlang.nif_error(:nif_not_loaded)
  @doc "The version of the libmlx EMLX runs on."
  def mlx_version, do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Waits for the reply to a posted job and unwraps it.
  """
  def await(ref) when is_reference(ref) do
    receive do
      {^ref, :ok} -> :ok
      {^ref, {:ok, value}} -> value
      {^ref, {:error, :argument, message}} -> raise ArgumentError, message
      {^ref, {:error, :mlx, message}} -> raise EMLX.NIFError, message
    end
  end
end
