defmodule EMLX.CommandQueue do
  @moduledoc """
  A handle to one worker OS thread and the MLX stream created on it, and
  the rules that pick the queue (and the device) work runs on.

  MLX streams are thread-local, so all MLX work for a queue runs on its own
  thread, in order. Each process can bind its own queue:

      {:ok, q} = EMLX.CommandQueue.new(:cpu)

      EMLX.CommandQueue.with_queue(q, fn ->
        # every EMLX / Nx operation in this block runs on `q`
        Nx.add(a, b)
      end)

  `with_queue/2` stores `{ref, device}` in the process dictionary under
  `:emlx_command_queue` and restores the previous value afterwards, so calls
  nest. Work of a process without a binding runs on the application-default
  queue of its device (`default/1`), which `EMLX.Application` starts for
  each available device at boot. When a tensor's device differs from the
  bound queue's device, the `:cross_device_promotion` and
  `:warn_cross_device` settings of the `:emlx` application decide what
  happens; see `resolve/1`.
  """

  alias EMLX.{NIF, Worker}

  @enforce_keys [:ref, :device]
  defstruct [:ref, :device]

  @type t() :: %__MODULE__{device: :cpu | :gpu, ref: reference()}

  # The process dictionary key of the binding.
  @binding :emlx_command_queue

  @doc """
  Allocates a new command queue for `device`: a dedicated OS thread and a
  new MLX stream on it. Returns `{:error, reason}` when the stream cannot be
  made (for example `:gpu` on a CPU-only build).

  ## Options

    * `:run_ahead` - eager ops only build MLX's lazy graph; nothing is
      computed until a result is read. Once the queue has run this many
      eager ops since it last started a computation, and its worker has no
      job waiting, the worker starts the newest result's graph in the
      background (`mx::async_eval`), so the device computes while the
      caller posts more ops. Results are the same. `0` turns it off.
      Defaults to the `:run_ahead` setting of the `:emlx` application,
      else the `EMLX_RUN_AHEAD` environment variable as the VM starts,
      else 256 on `:gpu` and 0 on `:cpu`.
  """
  @spec new(:cpu | :gpu, keyword()) :: {:ok, t()} | {:error, list()}
  def new(device, opts \\ [])

  def new(device, opts) when device in [:cpu, :gpu] do
    case NIF.queue_new(device, run_ahead(opts)) do
      {:ok, ref} -> {:ok, %__MODULE__{ref: ref, device: device}}
      {:error, reason} -> {:error, reason}
    end
  end

  def new(device, _opts),
    do: raise(ArgumentError, "device must be :cpu or :gpu, got: #{inspect(device)}")

  defp run_ahead(opts) do
    case Keyword.get_lazy(opts, :run_ahead, fn -> Application.get_env(:emlx, :run_ahead) end) do
      nil ->
        -1

      n when is_integer(n) and n >= 0 ->
        n

      other ->
        raise ArgumentError, ":run_ahead must be a non-negative integer, got: #{inspect(other)}"
    end
  end

  @doc """
  Like `new/2` but raises `EMLX.NIFError` on failure.
  """
  @spec new!(:cpu | :gpu, keyword()) :: t()
  def new!(device, opts \\ []) do
    case new(device, opts) do
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
  def synchronize(%__MODULE__{ref: ref}), do: ref |> NIF.queue_sync() |> Worker.await()

  @doc """
  Runs `fun` with `queue` bound to the calling process.
  """
  @spec with_queue(t(), (-> result)) :: result when result: term()
  def with_queue(%__MODULE__{ref: ref, device: device}, fun) when is_function(fun, 0) do
    previous = Process.get(@binding)
    Process.put(@binding, {ref, device})

    try do
      fun.()
    after
      if previous,
        do: Process.put(@binding, previous),
        else: Process.delete(@binding)
    end
  end

  ## Resolution

  @doc """
  Returns the default MLX device for this process.

  Reads `:default_device` from the `:emlx` application environment. Without
  it, the GPU is the default where this MLX build has one, else the CPU.

      Application.put_env(:emlx, :default_device, :cpu)
  """
  @spec default_device() :: :cpu | :gpu
  def default_device do
    case Application.get_env(:emlx, :default_device) do
      nil -> if NIF.device_available(:gpu), do: :gpu, else: :cpu
      device -> device
    end
  end

  @doc """
  Returns the command queue reference that work for `device` runs on.

    * If the process bound a queue with `with_queue/2` for the same device,
      that queue.
    * If the bound queue is for another device: with
      `config :emlx, cross_device_promotion: true` the bound queue is used
      anyway; otherwise (the default) the device's application-default queue.
      `config :emlx, warn_cross_device: true` logs a warning on a mismatch.
    * Otherwise the application-default queue of `device`.
  """
  @spec resolve(:cpu | :gpu) :: reference()
  def resolve(device) do
    case Process.get(@binding) do
      {ref, ^device} ->
        ref

      {ref, bound} ->
        if Application.get_env(:emlx, :warn_cross_device, false) do
          require Logger

          Logger.warning(
            "EMLX: a #{device} tensor is used inside a #{bound} command queue binding"
          )
        end

        if Application.get_env(:emlx, :cross_device_promotion, false),
          do: ref,
          else: default(device)

      nil ->
        default(device)
    end
  end

  ## Application-default queues

  @doc """
  Returns the application-default command queue reference for `device`.

  The references live in `:persistent_term` under
  `{EMLX, :default_worker, device}`. Raises `ArgumentError` when no queue
  exists for the device (e.g. `:gpu` on a CPU-only build).
  """
  @spec default(:cpu | :gpu) :: reference()
  def default(device) do
    case :persistent_term.get(default_key(device), nil) do
      nil -> start_and_default(device)
      ref -> ref
    end
  end

  # No default queue: on a node that loaded EMLX without starting its
  # application (a peer node running a distributed Nx.Serving, say), it is
  # started now; a device that still has none cannot be used.
  defp start_and_default(device) do
    emlx_started? = List.keymember?(Application.started_applications(), :emlx, 0)
    unless emlx_started?, do: {:ok, _} = Application.ensure_all_started(:emlx)

    case :persistent_term.get(default_key(device), nil) do
      nil ->
        raise ArgumentError,
              "EMLX has no #{inspect(device)} device in this build " <>
                "(MLX #{NIF.mlx_version()}); " <>
                if(device == :gpu,
                  do:
                    "build with LIBMLX_VARIANT=cuda13 on a machine with an NVIDIA GPU, or use device: :cpu",
                  else: "the CPU stream could not be created"
                )

      ref ->
        ref
    end
  end

  @doc false
  # Starts the application-default queue of `device` (called by
  # EMLX.Application at boot). Idempotent: a device that has one keeps it,
  # so :persistent_term.put/2 (which triggers a node-wide scan) runs at most
  # once per device over the VM's life. A device MLX cannot run on, or
  # whose stream cannot be made, is skipped (asking for it raises at use).
  @spec start_default(:cpu | :gpu) :: :ok
  def start_default(device) do
    key = default_key(device)

    if NIF.device_available(device) and :persistent_term.get(key, nil) == nil do
      case NIF.queue_new(device, run_ahead([])) do
        {:ok, ref} -> :persistent_term.put(key, ref)
        {:error, _reason} -> :skip
      end
    end

    :ok
  end

  # {EMLX, :default_worker, device}, spelled as an atom so that this module
  # does not depend on the EMLX module.
  defp default_key(device), do: {:"Elixir.EMLX", :default_worker, device}
end
