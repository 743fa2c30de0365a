defmodule EMLX.Telemetry do
  @moduledoc """
  Telemetry events of EMLX.

    * `[:emlx, :eval, :start | :stop | :exception]` - a span around
      `EMLX.eval/1`. Metadata: `%{device: device}`.
    * `[:emlx, :to_binary, :start | :stop | :exception]` - a span around
      reading a tensor back (`Nx.to_binary/2` and everything built on it).
      Metadata: `%{bytes: bytes}`.
    * `[:emlx, :to_pointer, :start | :stop | :exception]` - a span around
      `Nx.to_pointer/2`. Metadata: `%{mode: :local | :ipc}`.
    * `[:emlx, :memory]` - MLX's allocator statistics, after each
      `EMLX.eval/1` and on `memory_stats/0`. Measurements:
      `%{active_memory: bytes, peak_memory: bytes, cache_memory: bytes}`.

  Spans carry the usual `:system_time` / `:duration` measurements of
  `:telemetry.span/3`.
  """

  @doc "Emits `[:emlx, :memory]` with the current statistics and returns them."
  def memory_stats do
    stats = EMLX.NIF.memory_info()
    :telemetry.execute([:emlx, :memory], stats, %{})
    stats
  end
end
