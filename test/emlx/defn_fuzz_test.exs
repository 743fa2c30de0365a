defmodule EMLX.DefnFuzzTest do
  @moduledoc """
  Seeded random `defn` programs under `compiler: EMLX` against Nx's
  evaluator on Nx.BinaryBackend (`EMLX.DefnFuzz`): element-wise and
  integer ops, reductions, shape ops, dots, selects, casts, windows,
  gathers, constants, sorts, the patterns the compiler fuses (softmax,
  log-softmax, logsumexp, layer and RMS norm), `cond`, `while` and
  `value_and_grad`, with inputs and outputs in tuples, maps and nested
  containers. Each program runs with its inputs as a tuple, again with new
  values (a plan-cache hit), as a map (another container, same shapes) and
  vectorized; half of them fused (`mx::compile`), half replayed op by op.

  Environment: `EMLX_DEFN_FUZZ_SEEDS` - how many programs (default 120),
  `EMLX_DEFN_FUZZ_FROM` - the first seed (default 1),
  `EMLX_DEFN_FUZZ_FUSE` - `alternate` (default: odd seeds fused), `on` or
  `off`. A failure names its
  seed: `EMLX.DefnFuzz.check(seed, fuse: ...)` reproduces it and
  `EMLX.DefnFuzz.Gen.program(seed)` shows the program.
  """
  use EMLX.Case, async: true

  @moduletag timeout: 1_800_000

  @from EMLX.Case.env_int("EMLX_DEFN_FUZZ_FROM", 1)
  @last @from + EMLX.Case.env_int("EMLX_DEFN_FUZZ_SEEDS", 120) - 1
  # (one test per 20 programs: each reports when it ends, so a long run on
  # a host compiling kernels cold still shows progress, e.g. to
  # scripts/gpu_check.sh's stall watchdog)
  @chunk 20

  for first <- Enum.take_every(@from..@last//1, @chunk) do
    @first first
    @seeds first..min(first + @chunk - 1, @last)

    test "random programs give what Nx's evaluator gives (seeds #{@first}..#{min(first + @chunk - 1, @last)})" do
      results =
        for seed <- @seeds, do: EMLX.DefnFuzz.check(seed, device: device(), fuse: fuse?(seed))

      failures = for {:error, msg} <- results, do: msg
      assert failures == [], Enum.join(failures, "\n\n")
      # (a call is skipped where Nx's evaluator cannot compute the reference)
      assert Enum.count(results, &match?({:skipped, _}, &1)) <= max(div(Enum.count(@seeds), 5), 1)
    end
  end

  test "a program reproduces from its seed" do
    assert EMLX.DefnFuzz.Gen.program(7) == EMLX.DefnFuzz.Gen.program(7)
    refute EMLX.DefnFuzz.Gen.program(7) == EMLX.DefnFuzz.Gen.program(8)
  end

  test "the comparison catches a wrong value, type or container" do
    x = Nx.tensor([0.5, -1.5], backend: Nx.BinaryBackend)
    assert EMLX.DefnFuzz.compare_outputs({x}, {x}, {:f, 32}) == :ok
    assert {:error, _} = EMLX.DefnFuzz.compare_outputs({Nx.add(x, 1.0e-2)}, {x}, {:f, 32})
    assert {:error, _} = EMLX.DefnFuzz.compare_outputs({Nx.as_type(x, :f64)}, {x}, {:f, 32})
    assert {:error, _} = EMLX.DefnFuzz.compare_outputs(%{a: x}, {x}, {:f, 32})
  end

  defp fuse?(seed) do
    case System.get_env("EMLX_DEFN_FUZZ_FUSE", "alternate") do
      "alternate" -> rem(seed, 2) == 1
      "on" -> true
      "off" -> false
    end
  end
end
