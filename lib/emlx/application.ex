defmodule EMLX.Application do
  @moduledoc """
  OTP application for EMLX.

  At boot it creates the defn plan cache (`EMLX.Defn.Cache`) and starts the
  application-default `EMLX.CommandQueue` of each available device (`:cpu`,
  and `:gpu` where this MLX build has one). These queues serve every
  process that has not bound its own with `EMLX.CommandQueue.with_queue/2`;
  `EMLX.CommandQueue` keeps and resolves them.

  `start/2` is idempotent: a device that already has a default queue keeps
  it. Where the GPU is absent the GPU queue is skipped, and asking for it
  raises at use time.
  """
  use Application

  @impl true
  def start(_type, _args) do
    EMLX.Defn.Cache.init()
    Enum.each([:cpu, :gpu], &EMLX.CommandQueue.start_default/1)
    Supervisor.start_link([], strategy: :one_for_one, name: EMLX.Supervisor)
  end

  @doc """
  Returns the application-default command queue reference for `device`
  (see `EMLX.CommandQueue.default/1`).

  Raises `ArgumentError` when no queue exists for it (e.g. `:gpu` on a
  CPU-only build).
  """
  @spec default_worker(:cpu | :gpu) :: reference()
  defdelegate default_worker(device), to: EMLX.CommandQueue, as: :default
end
