defmodule EMLX.GC do
  @moduledoc """
  Frees the arrays of dead tensors before MLX evaluates.

  A tensor's MLX array lives as long as its handle, a NIF resource in the
  heap of the process that made it. A dead handle is only noticed by the
  BEAM's garbage collector, and the BEAM runs resource destructors later
  still, as scheduler work. Until then every intermediate of an eager
  computation keeps its array: MLX can neither reuse its buffer for the
  next op (donation) nor free it, so each evaluation allocates fresh
  memory. A 10M-element f32 chain of four ops peaked at 200 MB per call
  this way, and 880 MB stayed allocated across calls, against Python MLX's
  80 MB.

  So each process counts the bytes of the arrays its eager ops and compiled
  programs produce (views, and arrays under 4 KiB, excepted). When the
  count passes `config :emlx, :gc_bytes` (default 16 MiB; `false` turns
  this off), the next evaluation (`EMLX.eval/1`, a read-back) first lets
  the queue's worker catch up (its jobs, not the device), runs
  a garbage collection of the process (a full one: a minor collection
  misses the dead handles already promoted to the old heap, which depends
  on what else the process allocated), then waits on
  `EMLX.NIF.sweep_barrier/0` until the destructors that collection queued
  have run. The evaluation then sees only the arrays still referenced:
  intermediates are donated or freed, as in Python.

  A full collection costs about the size of the process's heap. A process
  whose heap is larger than `:gc_bytes` sweeps once its new arrays weigh
  as much as its heap, at most 16 times `:gc_bytes` (256 MiB by default),
  so that the collections stay a bounded share of its work. Measured on a
  2-core VM with a process holding an 80 MB heap: a compiled MLP step took
  720-1370 µs with a sweep every 16 MiB and 520-730 µs with no sweep.
  """

  @key {__MODULE__, :bytes}
  @default_bytes 16 * 1024 * 1024
  @min_bytes 4096
  @heap_factor 16

  # Ops whose result shares its input's buffer: they allocate nothing.
  @views [:reshape, :squeeze, :transpose, :broadcast, :broadcast_to, :slice, :bitcast]

  @doc """
  Counts, for this process, the bytes of `out` (a tensor template), the
  result of `op`, when `handle` is a real array (not a recording's
  placeholder) that owns new memory.
  """
  @spec produced(Nx.Tensor.t(), atom(), term()) :: :ok
  def produced(%Nx.Tensor{shape: shape, type: {_, bits}}, op, handle)
      when is_reference(handle) and op not in @views do
    bytes = Tuple.product(shape) * div(bits, 8)

    # Arrays under a page are not counted (they are the dispatch-bound case,
    # where this is on every op's path): the BEAM's own collections, which
    # their terms trigger, free them.
    if bytes >= @min_bytes do
      case Process.get(@key) do
        nil -> Process.put(@key, bytes)
        n -> Process.put(@key, n + bytes)
      end
    end

    :ok
  end

  def produced(_out, _op, _handle), do: :ok

  @doc """
  Called before an evaluation on `queue`: when this process has produced
  more than the threshold since the last sweep, collects its garbage and
  waits for the dead arrays to be freed.
  """
  @spec before_eval(EMLX.NIF.queue()) :: :ok
  def before_eval(queue) do
    case Process.get(@key) do
      nil ->
        :ok

      n ->
        limit = Application.get_env(:emlx, :gc_bytes, @default_bytes)
        if limit && n >= limit && n >= heap_bound(limit), do: sweep(queue)
        :ok
    end
  end

  # A full collection costs about the process's heap. A process whose heap
  # is larger than the limit sweeps once its new arrays weigh as much as
  # that heap (at most @heap_factor times the limit): the collections then
  # cost a bounded share of the work, for at most that much memory held by
  # dead arrays a while longer.
  defp heap_bound(limit) do
    {:total_heap_size, words} = Process.info(self(), :total_heap_size)
    min(words * :erlang.system_info(:wordsize), limit * @heap_factor)
  end

  @doc """
  Collects this process's garbage and waits until the dead arrays of
  `queue` are freed.
  """
  @spec sweep(EMLX.NIF.queue()) :: :ok
  def sweep(queue) do
    Process.delete(@key)
    # A job still queued holds the arrays it reads and makes, and the last
    # holder's release, not the collection, would then queue the destructor,
    # on no particular scheduler: let the worker catch up first (its jobs
    # only: the device need not have finished their work).
    unless EMLX.NIF.queue_idle(queue), do: queue |> EMLX.NIF.queue_drain() |> EMLX.Worker.await()
    :erlang.garbage_collect(self())
    ref = EMLX.NIF.sweep_barrier()

    # The barrier's destructor runs right after those the collection queued;
    # the timeout only guards against a scheduler that never gets to it.
    receive do
      {^ref, :swept} -> :ok
    after
      1_000 -> :ok
    end
  end
end
