defmodule EMLX.GCTest do
  @moduledoc """
  EMLX.GC: dead intermediates of eager work are freed before MLX evaluates
  (MLX's memory counters are process-wide, hence async: false).
  """
  use EMLX.Case, async: false

  # 4M f32 elements: 16 MiB an array.
  @n 4 * 1024 * 1024
  @bytes @n * 4

  defp chain(x), do: Nx.tanh(Nx.add(Nx.multiply(Nx.exp(x), 2), 1))

  defp input do
    Nx.iota({@n}, type: :f32, backend: {EMLX.Backend, device: device()})
    |> Nx.multiply(1.0e-6)
    |> EMLX.eval()
  end

  # Frees what is dead: the sweep queues the frees as jobs, the drain waits for them.
  defp settle(x) do
    EMLX.GC.sweep(x.data.queue)
    drain(x)
    EMLX.reset_peak_memory()
  end

  defp drain(x), do: x.data.queue |> EMLX.NIF.queue_drain() |> EMLX.Worker.await()

  test "a sweep barrier answers once the destructors queued before it have run" do
    ref = EMLX.NIF.sweep_barrier()
    assert is_reference(ref)
    assert_receive {^ref, :swept}, 1_000
  end

  test "an eager chain's intermediates are donated, not kept alive by dead handles" do
    x = input()
    settle(x)
    base = EMLX.memory_info().active_memory

    for _ <- 1..4, do: x |> chain() |> EMLX.eval()

    # The input and one output: the exp result is reused in place by the
    # ops after it. Without the sweep every call held four arrays, and the
    # dead ones of earlier calls until the BEAM collected them.
    assert EMLX.memory_info().peak_memory <= base + 2 * @bytes + 1024 * 1024
  end

  test "a sweep frees the arrays of dead tensors" do
    x = input()
    settle(x)
    base = EMLX.memory_info().active_memory
    _dead = x |> Nx.exp() |> EMLX.eval()
    # MLX's counters are process-wide: a few bytes freed by earlier tests'
    # leftovers (seen on the GPU: 8) must not decide it, 16 MiB must.
    slack = 1024 * 1024
    assert EMLX.memory_info().active_memory >= base + @bytes - slack
    EMLX.GC.sweep(x.data.queue)
    drain(x)
    # On the GPU, MLX lets go of an array's buffer from its stream's
    # completion handler, which can run just after the evaluation returned
    # (seen on the H200: the 16 MiB were still counted right after the
    # sweep): the memory must come down within a second.
    assert eventually(fn -> EMLX.memory_info().active_memory < base + @bytes - slack end)
  end

  defp eventually(check, tries \\ 100) do
    cond do
      check.() ->
        true

      tries == 0 ->
        false

      true ->
        Process.sleep(10)
        eventually(check, tries - 1)
    end
  end

  # Tests that set :gc_bytes have it put back after them.
  setup do
    previous = Application.fetch_env(:emlx, :gc_bytes)

    on_exit(fn ->
      case previous do
        {:ok, value} -> Application.put_env(:emlx, :gc_bytes, value)
        :error -> Application.delete_env(:emlx, :gc_bytes)
      end
    end)
  end

  test "gc_bytes: false turns the sweep off" do
    # A dead 16 MiB result (its evaluation's own check stays under the
    # limit), a lazy op that passes it, then the check an evaluation makes
    # first. With the sweep on it frees the dead array. With it off there
    # is no sweep: the count of bytes produced stays (the BEAM may still
    # collect the handle on its own, so memory cannot tell).
    dead_after_check = fn ->
      x = input()
      settle(x)
      base = EMLX.memory_info().active_memory
      _dead = x |> Nx.exp() |> EMLX.eval()
      _lazy = Nx.negate(x)
      EMLX.GC.before_eval(x.data.queue)
      drain(x)
      # (on the GPU the buffer is let go once the device is done with it)
      freed? = eventually(fn -> EMLX.memory_info().active_memory - base < @bytes end)
      {freed?, Process.get({EMLX.GC, :bytes})}
    end

    Application.put_env(:emlx, :gc_bytes, @bytes + 1)
    assert {true, nil} = dead_after_check.()
    Application.put_env(:emlx, :gc_bytes, false)
    assert {_, counted} = dead_after_check.()
    assert counted >= 2 * @bytes
  end

  test "a process with a heap larger than gc_bytes sweeps once its arrays weigh as much as its heap" do
    # arrays of 1 MiB (256k f32), five of them, against a limit of 1 MiB
    small = Nx.iota({256 * 1024}, type: :f32, backend: {EMLX.Backend, device: device()})
    produce = fn -> small |> Nx.add(1) |> EMLX.eval() end

    counted_after = fn ->
      Process.delete({EMLX.GC, :bytes})
      for _ <- 1..5, do: produce.()
      Process.get({EMLX.GC, :bytes}, 0)
    end

    Application.put_env(:emlx, :gc_bytes, 1024 * 1024)
    # a small heap: each evaluation past 1 MiB sweeps (and resets the count)
    assert counted_after.() <= 2 * 1024 * 1024

    # a heap of about 32 MB (a 2M-element list): no sweep until the arrays
    # weigh as much (or 16 MiB), so the count runs past the limit
    big = Enum.to_list(1..2_000_000)
    assert counted_after.() >= 4 * 1024 * 1024
    assert length(big) == 2_000_000
  end
end
