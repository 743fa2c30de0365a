defmodule EMLX.Application do
  @moduledoc """
  OTP application for EMLX.

  At boot it allocates the application-default `EMLX.CommandQueue` for each
  available device (`:cpu`, and `:gpu` where this MLX build has one) and
  keeps the queue references in `:persistent_term` under
  `{EMLX, :default_worker, device}`. These queues serve every process that
  has not bound its own with `EMLX.CommandQueue.with_queue/2`.

  `start/2` is idempotent: a device that already has a default queue keeps
  it, so `:persistent_term.put/2` (which triggers a node-wide scan) runs at
  most once per device over the VM's life. Where the GPU is absent the GPU
  queue is skipped, and asking for it raises at use time.
  """
  use Application

  @impl true
  def start(_type, _args) do
    EMLX.Defn.Cache.init()

    for device <- [:cpu, :gpu], EMLX.NIF.device_available(device) do
      key = {EMLX, :default_worker, device}

      if :persistent_term.get(key, nil) == nil do
        case EMLX.NIF.queue_new(device) do
          {:ok, ref} -> :persistent_term.put(key, ref)
          {:error, _reason} -> :skip
        end
      end
    end

    Supervisor.start_link([], strategy: :one_for_one, name: EMLX.Supervisor)
  end

  @doc """
  Returns the application-default command queue reference for `device`.

  Raises `ArgumentError` when no queue exists for it (e.g. `:gpu` on a
  CPU-only build).
  """
  @spec default_worker(:cpu | :gpu) :: reference()
  def default_worker(device) do
    case :persistent_term.get({EMLX, :default_worker, device}, nil) do
      nil ->
        raise ArgumentError,
              "EMLX has no #{inspect(device)} device in this build " <>
                "(MLX #{EMLX.NIF.mlx_version()}); " <>
                if(device == :gpu,
                  do:
                    "build with LIBMLX_VARIANT=cuda13 on a machine with an NVIDIA GPU, or use device: :cpu",
                  else: "the CPU stream could not be created"
                )

      ref ->
        ref
    end
  end
end
