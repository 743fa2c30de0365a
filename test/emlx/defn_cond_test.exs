defmodule EMLX.DefnCondTest do
  # `cond` under compiler: EMLX records as one instruction the worker runs
  # (only the branch taken), so a function with a cond is one cached plan
  # and a cond in a loop's body keeps the loop on the worker (issue 14:
  # Scholar's NNDescent and Trimap loops hold `if`s with loops inside).
  # Not async: it counts read-backs and plans.
  use EMLX.Case, async: false

  import Nx.Defn

  setup do
    EMLX.Defn.Cache.clear()
    notify_read_backs()
  end

  defn clauses(x, k) do
    cond do
      k < 0 -> {x - 1, Nx.sum(x)}
      k == 0 -> {x * 2, Nx.product(x)}
      k < 10 -> {x + k, Nx.reduce_max(x)}
      true -> {x, k * 1.0}
    end
  end

  defn only_in_branch(x, y, flag) do
    if flag, do: x + y, else: x
  end

  # a value only the branches read, made with a function of its own
  # (Nx.reduce's): the function's parameters are not the scope's
  defn reduce_in_branch(x) do
    r = Nx.reduce(x, 0, [axes: [1]], fn a, b -> a + b end)
    c = if Nx.reduce_max(x) > 0.3, do: Nx.sqrt(Nx.abs(r)), else: Nx.sin(r)
    Nx.cumulative_sum(c, axis: 0)
  end

  defn window_reduce_in_branch(x, y) do
    r = Nx.window_reduce(x, 0, {2}, fn a, b -> Nx.max(a, b) * 1 end)
    if Nx.reduce_max(y) > 0.3, do: r * 2, else: r - 1
  end

  defn nested(x) do
    if Nx.sum(x) > 0 do
      if Nx.reduce_max(x) > 5, do: x * 10, else: x * 2
    else
      -x
    end
  end

  defn loop_in_branch_in_loop(x) do
    {_, acc} =
      while {i = 0, acc = x}, i < 6 do
        acc =
          if rem(i, 3) == 0 do
            {_, a, _} = while({j = 0, acc, i}, j < i, do: {j + 1, acc + 1, i})
            a
          else
            acc * 2
          end

        {i + 1, acc}
      end

    acc
  end

  defn branch_reads_loop_result(x) do
    {i, acc} = while({i = 0, acc = x}, i < 3, do: {i + 1, acc * 2})
    y = i + 1
    if y > 2, do: acc + y, else: acc
  end

  # The branches not taken read a loop that would not end; two conds share
  # it, which Nx.Defn.Tree.scope_ids/1 counts as the scope's.
  defn lazy_branches(x, flag) do
    {_, y} = while({i = 0, y = x}, i >= 0, do: {i + 1, y})
    a = if flag, do: x, else: y
    b = if flag, do: x * 2, else: y * 3
    a + b
  end

  defn lazy_branches_in_loop(x) do
    {_, acc, _} =
      while {i = 0, acc = x, flag = 1}, i < 3 do
        {i + 1, lazy_branches(acc, flag), flag}
      end

    acc
  end

  defn hook_in_branch(x) do
    if Nx.sum(x) > 0, do: hook(x + 1, :taken), else: hook(x - 1, :other)
  end

  defp emlx_jit(fun, opts \\ []), do: Nx.Defn.jit(fun, Keyword.put(opts, :compiler, EMLX))

  test "every clause of a multi-clause cond, as Nx's evaluator" do
    for k <- [-3, 0, 4, 20], do: assert_compiled_same(&clauses/2, [[1.0, 2.0, 3.0], k])
  end

  test "a parameter read only inside a branch" do
    assert_compiled_same(&only_in_branch/3, [[1, 2], [10, 20], 1])
    assert_compiled_same(&only_in_branch/3, [[1, 2], [10, 20], 0])
  end

  test "nested conds" do
    for x <- [[1.0, 2.0], [1.0, 9.0], [-4.0, 1.0]], do: assert_compiled_same(&nested/1, [x])
  end

  test "a branch reads one result of a loop whose other result the scope reads" do
    assert_compiled_same(&branch_reads_loop_result/1, [[1.0, 2.0]])
  end

  test "a loop inside a branch inside a loop" do
    assert_compiled_same(&loop_in_branch_in_loop/1, [[1.0, 2.0]])
  end

  test "no read-back while running, and one cached plan for every branch" do
    f = emlx_jit(&clauses/2)
    x = emlx([1.0, 2.0, 3.0])

    results =
      for k <- [-3, 0, 4, 20] do
        {a, b} = f.(x, emlx(k))
        {a, b}
      end

    refute_received :read_back
    assert EMLX.Defn.Cache.size() == 1

    assert Enum.map(results, fn {a, b} -> {Nx.to_list(a), Nx.to_number(b)} end) == [
             {[0.0, 1.0, 2.0], 6.0},
             {[2.0, 4.0, 6.0], 6.0},
             {[5.0, 6.0, 7.0], 3.0},
             {[1.0, 2.0, 3.0], 20.0}
           ]
  end

  test "a loop with a loop in a branch runs on the worker" do
    f = emlx_jit(&loop_in_branch_in_loop/1)
    result = f.(emlx([1.0, 2.0]))
    refute_received :read_back
    assert Nx.to_list(result) == [28.0, 44.0]
  end

  # Issue 14 (Scholar's MDS, 100x slower): a node two conds share only in
  # their branches was taken for one the scope computes anyway, so it ran
  # whichever branch was taken. On a queue of its own, so that a regression
  # cannot block others.
  @tag timeout: 30_000
  test "the branches not taken do not run, even what two conds share" do
    opts = [command_queue: EMLX.CommandQueue.new!(device())]
    assert Nx.to_list(emlx_jit(&lazy_branches/2, opts).(emlx([1.0, 2.0]), emlx(1))) == [3.0, 6.0]
    assert Nx.to_list(emlx_jit(&lazy_branches_in_loop/1, opts).(emlx([1.0, 2.0]))) == [27.0, 54.0]
  end

  # (its parameters were taken for free variables of the scope and read
  # at the scope's positions: an Enum.OutOfBoundsError in Nx's evaluator;
  # found by test/emlx/defn_fuzz_test.exs)
  test "a branch reads a value made with a function of its own" do
    assert_compiled_same(&reduce_in_branch/1, [[[1.0, 2.0, 3.0]]])
    assert_compiled_same(&reduce_in_branch/1, [[[-1.0, -2.0, -3.0], [0.1, 0.2, -5.0]]])
    assert_compiled_same(&window_reduce_in_branch/2, [[1.0, 4.0, 2.0, 3.0], [1.0]])
    assert_compiled_same(&window_reduce_in_branch/2, [[1.0, 4.0, 2.0, 3.0], [-1.0]])
  end

  test "a hook runs in the branch taken only" do
    test = self()

    hooks = %{
      taken: &send(test, {:taken, Nx.to_list(&1)}),
      other: &send(test, {:other, Nx.to_list(&1)})
    }

    f = emlx_jit(&hook_in_branch/1, hooks: hooks)
    assert Nx.to_list(f.(emlx([1.0, 2.0]))) == [2.0, 3.0]
    assert_received {:taken, [2.0, 3.0]}
    assert Nx.to_list(f.(emlx([-1.0, -2.0]))) == [-2.0, -3.0]
    assert_received {:other, [-2.0, -3.0]}
    refute_received {:taken, _}
  end
end
