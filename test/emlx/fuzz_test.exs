defmodule EMLX.FuzzTest do
  @moduledoc """
  A seeded storm of bad calls at the public API (Nx on `EMLX.Backend`,
  `EMLX.*` on device refs) and straight at the NIF (`EMLX.NIF.op/4` with
  every op of `EMLX.NIF.op_list/0`, and the other NIF functions).

  The storm lives in `test/support/fuzz/`: `EMLX.Fuzz.Storm` (the pool and
  the runner), `EMLX.Fuzz.Gen` and `EMLX.Fuzz.ApiGen` (the calls),
  `EMLX.Fuzz.Values` (random values) and `EMLX.Fuzz.Crashes` (the classes
  of call that once crashed the VM, with their reproductions).

  Every call must raise an Elixir exception or return a valid result; none
  may crash or hang the VM. Arrays that are huge (lazily: MLX allocates on
  evaluation) are never evaluated.

  Environment:

    * `EMLX_FUZZ_SEED` - the seed (default 20_240_611); the storm is
      reproducible call for call from it.
    * `EMLX_FUZZ_CALLS` - the number of calls (default 12_000).
    * `EMLX_FUZZ_LOG` - a file that gets one line per call, written
      unbuffered *before* the call runs: after a crash its last line is the
      culprit. Run the storm in its own OS process for that:
      `EMLX_FUZZ_LOG=/tmp/fuzz.log mix test test/emlx/fuzz_test.exs`.
    * `EMLX_FUZZ_KNOWN=run` - do not skip the known crashes
      (`EMLX.Fuzz.Crashes`).
  """
  use EMLX.Case, async: false

  @moduletag timeout: 900_000

  ## The tests

  test "a storm of bad calls raises or returns, and never brings the VM down" do
    seed = env_int("EMLX_FUZZ_SEED", 20_240_611)
    n = env_int("EMLX_FUZZ_CALLS", 12_000)
    parent = self()
    progress = :atomics.new(1, [])

    {pid, mon} =
      spawn_monitor(fn ->
        log =
          case System.get_env("EMLX_FUZZ_LOG") do
            nil -> nil
            path -> File.open!(path, [:write, :raw, :binary])
          end

        st = EMLX.Fuzz.Storm.new(seed)

        st =
          Enum.reduce(1..n, st, fn i, st ->
            :atomics.put(progress, 1, i)
            EMLX.Fuzz.Storm.step(st, i, log)
          end)

        send(
          parent,
          {:storm,
           Map.take(st, [:calls, :counts, :skipped, :invalid, :examples, :notes, :by_fun, :former])}
        )
      end)

    result = watch(pid, mon, progress, -1)
    IO.puts("\nfuzz (seed #{seed}): #{result.calls} calls")

    by_fun =
      result.by_fun
      |> Enum.sort_by(fn {{m, f}, _} -> {inspect(m), f} end)
      |> Enum.map_join(", ", fn {{m, f}, c} -> "#{inspect(m)}.#{f} #{c}" end)

    IO.puts("  calls by function: #{by_fun}")
    IO.puts("  outcomes:")

    for {kind, c} <- Enum.sort_by(result.counts, &(-elem(&1, 1))) do
      example = if e = result.examples[kind], do: "  e.g. #{String.slice(e, 0, 160)}", else: ""
      IO.puts("  #{inspect(kind)}: #{c}#{example}")
    end

    for {id, c} <- result.skipped, do: IO.puts("  skipped (known crash #{id}): #{c}")

    former = Enum.map_join(Enum.sort(result.former), ", ", fn {id, c} -> "#{id} #{c}" end)
    IO.puts("  formerly crashing calls run: #{former}")

    for {key, {c, e}} <- result.notes,
        do: IO.puts("  note: #{key}: #{c}, e.g. #{String.slice(e, 0, 160)}")

    assert result.calls >= 10_000
    assert Enum.sum(Map.values(result.counts)) + Enum.sum(Map.values(result.skipped)) == n
    assert result.invalid == [], "invalid outcomes:\n#{inspect(result.invalid, pretty: true)}"
    assert Map.keys(result.skipped) -- Map.keys(EMLX.Fuzz.Crashes.known()) == []
    # the classes of call that once crashed the VM are still in the storm
    assert Enum.sum(Map.values(result.former)) > 100
    assert result.counts[:ok] > 1000
    assert result.counts[ArgumentError] > 1000
    # MLX's own errors: raised by the call, or (ops return pending arrays) by the first read
    assert (result.counts[EMLX.NIFError] || 0) +
             (result.counts[{:raised_at_first_read, EMLX.NIFError}] || 0) > 100

    # The VM, the default queue and MLX still compute correctly.
    assert_same(fn a, b -> Nx.dot(a, b) |> Nx.add(1) end, [
      Nx.iota({4, 5}, type: :f32),
      Nx.iota({5, 3}, type: :f32)
    ])

    assert_same(&Nx.sum(&1, axes: [1]), [Nx.iota({3, 4}, type: :s64)])
    assert_same(&Nx.cumulative_sum(&1, axis: 0), [Nx.tensor([1, 2, 3], type: :u8)])
    assert Nx.to_list(Nx.add(emlx([1, 2]), emlx([3, 4]))) == [4, 6]
    q = EMLX.CommandQueue.new!(device())

    assert EMLX.CommandQueue.with_queue(q, fn -> Nx.sum(emlx([1.5, 2.5])) |> Nx.to_number() end) ==
             4.0
  end

  # Waits for the storm; fails if no call completes for two minutes (a hang).
  defp watch(pid, mon, progress, last) do
    receive do
      {:storm, result} ->
        Process.demonitor(mon, [:flush])
        result

      {:DOWN, ^mon, :process, ^pid, reason} ->
        flunk("the storm process died: #{inspect(reason)}")
    after
      120_000 ->
        now = :atomics.get(progress, 1)

        if now == last do
          Process.exit(pid, :kill)
          flunk("call #{now} hung (rerun with EMLX_FUZZ_LOG=file to see it)")
        end

        watch(pid, mon, progress, now)
    end
  end
end
