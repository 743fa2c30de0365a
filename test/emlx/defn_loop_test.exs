defmodule EMLX.DefnLoopTest do
  # `while` under compiler: EMLX runs on the worker thread (issue 14: a
  # Scholar doctest took 800 s, with the recorder's heap growing per
  # iteration). Not async: it counts read-backs and plans.
  use EMLX.Case, async: false

  import Nx.Defn

  setup do
    EMLX.Defn.Cache.clear()
  end

  defn decay(x, n) do
    {_, acc, _} =
      while {i = 0, acc = x, n}, i < n do
        {i + 1, acc * 0.999 + 1.0, n}
      end

    acc
  end

  defn nested(x) do
    {_, acc} =
      while {i = 0, acc = x}, i < 5 do
        {_, inner} = while({j = 0, acc}, j < 3, do: {j + 1, acc + 1})
        {i + 1, inner}
      end

    acc
  end

  defn branches(x) do
    {_, a, b} =
      while {i = 0, a = x, b = x}, i < 7 do
        {a, b} =
          cond do
            i < 2 -> {a + 1, b}
            i < 4 -> {a, b * 3}
            true -> {a - 1, b - 1}
          end

        acc = if rem(i, 2) == 0, do: a + 0.5, else: a * 2
        {i + 1, acc, b}
      end

    {a, b}
  end

  defn single_state(x) do
    while x, Nx.sum(x) < 100 do
      x * 2
    end
  end

  defn loop_in_branch(x) do
    {_, acc} =
      while {i = 0, acc = x}, i < 4 do
        acc =
          if i > 1 do
            {_, a} = while({j = 0, acc}, j < 2, do: {j + 1, acc + 10})
            a
          else
            acc + 1
          end

        {i + 1, acc}
      end

    acc
  end

  defn hooked(x) do
    {_, acc} =
      while {i = 0, acc = x}, i < 4 do
        acc = if i == 1, do: hook(acc + 1, :inside), else: acc * 2
        {i + 1, acc}
      end

    acc
  end

  defn grow(x) do
    {_, acc} =
      while {i = 0, acc = x}, i < 40 do
        {i + 1, hook(acc + 1, :mem)}
      end

    acc
  end

  defn mixed_types(x) do
    {_, count, total} =
      while {i = Nx.u32(0), count = Nx.s64(0), total = x}, i < 10 do
        {i + 1, count + Nx.sum(Nx.greater(total, 3)), total + 0.5}
      end

    {count, total}
  end

  defp drain_read_backs do
    receive do
      :read_back -> drain_read_backs()
    after
      0 -> :ok
    end
  end

  defp emlx_jit(fun, opts \\ []), do: Nx.Defn.jit(fun, Keyword.put(opts, :compiler, EMLX))

  describe "results as Nx's evaluator gives them" do
    test "a counted loop" do
      assert_compiled_same(&decay/2, [[1.0, 2.0], 1000])
    end

    test "nested loops" do
      assert_compiled_same(&nested/1, [[1.0, 2.0]])
    end

    test "cond and if in the body (computed as selects)" do
      assert_compiled_same(&branches/1, [[1.0, 2.0, -3.0]])
    end

    test "a single tensor as the state, a reduction as the condition" do
      assert_compiled_same(&single_state/1, [[1.0, 2.0]])
    end

    test "a loop inside a branch of a loop's body" do
      assert_compiled_same(&loop_in_branch/1, [[1.0, 2.0]])
    end

    test "states of several types" do
      assert_compiled_same(&mixed_types/1, [[1.0, 3.0, 5.0]])
    end

    test "a condition that is false at once" do
      assert_compiled_same(&decay/2, [[1.0, 2.0], 0])
    end
  end

  describe "on the worker thread" do
    setup do
      notify_read_backs()
    end

    test "no read-back per iteration, and the call is one cached plan" do
      f = emlx_jit(&branches/1)
      x = emlx([1.0, 2.0])
      {a, b} = f.(x)
      refute_received :read_back
      assert Nx.to_list(a) |> length() == 2
      assert_received :read_back

      {a2, _} = f.(x)
      assert Nx.to_list(a2) == Nx.to_list(a)
      assert Nx.to_list(b) |> length() == 2
      assert EMLX.Defn.Cache.size() == 1
    end

    test "a block whose default implementation loops runs it here too (Nx's eigh, linalg: :nx)" do
      m = [[4.0, 1.0, 0.5, 0.0], [1.0, 3.0, 0.2, 0.1], [0.5, 0.2, 2.0, 0.3], [0.0, 0.1, 0.3, 1.0]]
      {want_vals, want_vecs} = Nx.LinAlg.eigh(Nx.tensor(m, backend: Nx.BinaryBackend))
      Application.put_env(:emlx, :linalg, :nx)

      try do
        # compiled, and eagerly (EMLX.Backend compiles Nx's algorithm)
        for eigh <- [emlx_jit(&Nx.LinAlg.eigh/1), &Nx.LinAlg.eigh/1] do
          input = emlx(m)
          drain_read_backs()
          {vals, vecs} = eigh.(input)
          refute_received :read_back
          assert_tensor(vals, want_vals)
          assert_tensor(vecs, want_vecs)
        end
      after
        Application.delete_env(:emlx, :linalg)
      end
    end

    test "a thousand iterations take far less than a thousand recordings" do
      f = emlx_jit(&decay/2)
      x = emlx(List.duplicate(1.0, 16))
      f.(x, 10)
      {us, result} = :timer.tc(fn -> f.(x, 20_000) |> Nx.to_list() end)
      assert_in_delta hd(result), 1000.0, 1.0
      # about 30 us an iteration on a 2-core machine; recording each one costs much more
      assert us < 20_000_000
    end
  end

  describe "loops that need data while recording run from the BEAM" do
    test "a hook in the body is called each time its branch is taken" do
      test = self()
      f = emlx_jit(&hooked/1, hooks: %{inside: &send(test, {:inside, Nx.to_list(&1)})})
      assert Nx.to_list(f.(emlx([1.0, 2.0]))) == [12.0, 20.0]
      assert_received {:inside, [3.0, 5.0]}
      refute_received {:inside, _}
    end

    test "the state between iterations is all that is kept" do
      test = self()
      n = 100_000

      mem = fn _ ->
        # unreachable arrays are freed when the process collects them
        :erlang.garbage_collect()
        send(test, {:mem, EMLX.NIF.memory_info().active_memory})
      end

      result = emlx_jit(&grow/1, hooks: %{mem: mem}).(emlx(List.duplicate(0.0, n)))
      assert Nx.to_list(result) |> hd() == 40.0

      samples =
        for _ <- 1..40 do
          receive do
            {:mem, m} -> m
          after
            0 -> flunk("a hook call is missing")
          end
        end

      # 40 iterations of a 400 KB state would be 16 MB if each were kept
      assert Enum.max(samples) - Enum.min(samples) < 4 * n * 4
    end
  end
end
