defmodule EMLX.MemoryTest do
  @moduledoc "Memory controls move as documented (MLX's allocator is process-wide)."
  use EMLX.Case, async: false

  defp big,
    do: Nx.iota({1024, 1024}, type: :f32, backend: EMLX.Backend) |> Nx.multiply(2) |> EMLX.eval()

  # MLX's allocator is process-wide: arrays whose last reference another test
  # process dropped are freed whenever that process is collected, so a
  # measurement can see a few bytes go while the 4 MiB arrive. One attempt out
  # of three with no such release is enough.
  defp grow_once do
    EMLX.clear_cache()
    before = EMLX.memory_info()
    t = big()
    during = EMLX.memory_info()

    if during.active_memory >= before.active_memory + 4 * 1024 * 1024,
      do: {:ok, t, during},
      else: {:error, before, during}
  end

  test "active and peak memory grow with live tensors; dropping them and clearing the cache releases it" do
    assert {:ok, t, during} =
             Enum.reduce_while(1..3, nil, fn _, _ ->
               case grow_once() do
                 {:ok, _, _} = ok -> {:halt, ok}
                 other -> {:cont, other}
               end
             end)

    assert during.peak_memory >= during.active_memory

    Nx.backend_deallocate(t)
    EMLX.CommandQueue.synchronize(%EMLX.CommandQueue{ref: t.data.queue, device: device()})
    after_drop = EMLX.memory_info()
    assert after_drop.active_memory <= during.active_memory - 4 * 1024 * 1024
    assert EMLX.clear_cache() == :ok
    assert EMLX.memory_info().cache_memory == 0
  end

  test "reset_peak_memory/0 brings the peak down to what is active" do
    t = big()
    Nx.backend_deallocate(t)
    EMLX.CommandQueue.synchronize(%EMLX.CommandQueue{ref: t.data.queue, device: device()})
    assert EMLX.reset_peak_memory() == :ok
    info = EMLX.memory_info()
    assert info.peak_memory <= info.active_memory + 1024
  end

  test "set_cache_limit(0) keeps no cache; the previous limit comes back" do
    prev = EMLX.set_cache_limit(0)
    t = big()
    Nx.backend_deallocate(t)
    EMLX.CommandQueue.synchronize(%EMLX.CommandQueue{ref: t.data.queue, device: device()})
    assert EMLX.memory_info().cache_memory == 0
    assert EMLX.set_cache_limit(prev) == 0
  end

  def forward(event, measurements, metadata, parent),
    do: send(parent, {event, measurements, metadata})

  test "telemetry: eval and to_binary spans, and memory statistics" do
    parent = self()
    id = "emlx-test-#{System.unique_integer()}"

    :telemetry.attach_many(
      id,
      [[:emlx, :eval, :stop], [:emlx, :to_binary, :stop], [:emlx, :memory]],
      &__MODULE__.forward/4,
      parent
    )

    try do
      t = emlx([1, 2, 3]) |> EMLX.eval()
      dev = device()
      assert_receive {[:emlx, :eval, :stop], %{duration: d}, %{device: ^dev}} when d >= 0

      assert_receive {[:emlx, :memory], %{active_memory: a, peak_memory: _, cache_memory: _}, _}
                     when is_integer(a)

      Nx.to_binary(t)
      assert_receive {[:emlx, :to_binary, :stop], %{duration: _}, %{bytes: 12}}
    after
      :telemetry.detach(id)
    end
  end
end
