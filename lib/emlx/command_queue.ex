defmodule EMLX.CommandQueue do
  @moduledoc """
  A handle to one worker OS thread and the MLX stream created on it.

  MLX streams are thread-local, so all MLX work for a queue runs on its own
  thread, in order. Each process can bind its own queue:

      {:ok, q} = EMLX.CommandQueue.new(:cpu)

      EMLX.CommandQueue.with_queue(q, fn ->
        # every EMLX / Nx operation in this block runs on `q`
        Nx.add(a, b)
      end)

  `with_queue/2` stores `{ref, device}` in the process dictionary under
  `:emlx_command_queue` and restores the previous value afterwards, so calls
  nest. When a tensor's device differs from the bound queue's device, the
  `:cross_device_promotion` and `:warn_cross_device` settings of the `:emlx`
  application decide what happens; see `EMLX.resolve_worker/1`.
  """

  @enforce_keys [:ref, :device]
  defstruct [:ref, :device]

  @type t() :: %__MODULE__{device: :cpu | :gpu, ref: reference()}

  @doc """
  Allocates a new command queue for `device`: a dedicated OS thread and a
  new MLX stream on it. Returns `{:error, reason}` when the stream cannot be
  made (for example `:gpu` on a CPU-only build).
  """
  @spec new(:cpu | :gpu) :: {:ok, t()} | {:error, list()}
  def new(device) when device in [:cpu, :gpu] do
    case EMLX.NIF.queue_new(device) do
      {:ok, ref} -> {:ok, %__MODULE__{ref: ref, device: device}}
      {:error, reason} -> {:error, reason}
    end
  end

  def new(device),
    do: raise(ArgumentError, "device must be :cpu or :gpu, got: #{inspect(device)}")

  @doc """
  Like `new/1` but raises `EMLX.NIFError` on failure.
  """
  @spec new!(:cpu | :gpu) :: t()
  def new!(device) do
    case new(device) do
      {:ok, queue} ->
        queue

      {:error, reason} ->
        raise EMLX.NIFError, "could not create a #{device} command queue: #{reason}"
    end
  end

  @doc """
  Blocks the calling process until every job posted to the queue so far has
  finished and its MLX stream is synchronized. The worker does the waiting;
  the caller only waits for the reply message.
  """
  @spec synchronize(t()) :: :ok
  def synchronize(%__MODULE__{ref: ref}), do: ref |> EMLX.NIF.queue_sync() |> EMLX.Worker.await()

  @doc """
  Runs `fun` with `queue` bound to the calling process.
  """
  @spec with_queue(t(), (-> result)) :: result when result: term()
  def with_queue(%__MODULE__{ref: ref, device: device}, fun) when is_function(fun, 0) do
    previous = Process.get(:emlx_command_queue)
    Process.put(:emlx_command_queue, {ref, device})

    try do
      fun.()
    after
      if previous,
        do: Process.put(:emlx_command_queue, previous),
        else: Process.delete(:emlx_command_queue)
    end
  end
end
