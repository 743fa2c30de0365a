defmodule EMLX.DefnTest do
  use EMLX.Case, async: true
  # On the GPU, MLX compiles each new kernel at run time (NVRTC): first calls are slow.
  @moduletag timeout: 600_000
  import Nx.Defn

  defn mlp_loss({w1, b1, w2, b2}, x, y) do
    h = Nx.max(Nx.dot(x, w1) + b1, 0)
    logits = Nx.dot(h, w2) + b2
    logp = logits - Nx.log(Nx.sum(Nx.exp(logits), axes: [1], keep_axes: true))
    -Nx.mean(Nx.sum(logp * y, axes: [1]))
  end

  defn mlp_grad(params, x, y), do: value_and_grad(params, &mlp_loss(&1, x, y))

  defn conv_loss({k, b}, x) do
    y = Nx.conv(x, k, padding: :same, strides: [1, 1]) + Nx.reshape(b, {1, 4, 1, 1})
    y = Nx.window_max(Nx.tanh(y), {1, 1, 2, 2}, strides: [1, 1, 2, 2])
    Nx.sum(y * y)
  end

  defn conv_grad(params, x), do: value_and_grad(params, &conv_loss(&1, x))

  defn attention_loss({wq, wk, wv}, x) do
    q = Nx.dot(x, wq)
    k = Nx.dot(x, wk)
    v = Nx.dot(x, wv)
    scores = Nx.dot(q, [2], [0], k, [2], [0]) / Nx.sqrt(8.0)
    scores = scores - Nx.reduce_max(scores, axes: [2], keep_axes: true)
    weights = Nx.exp(scores) / Nx.sum(Nx.exp(scores), axes: [2], keep_axes: true)
    Nx.sum(Nx.dot(weights, [2], [0], v, [1], [0]) ** 2)
  end

  defn attention_grad(params, x), do: value_and_grad(params, &attention_loss(&1, x))

  defp random(shape, seed) do
    key = Nx.Random.key(seed) |> Nx.backend_copy(Nx.BinaryBackend)
    {t, _} = Nx.Random.normal(key, shape: shape, type: :f32)
    Nx.backend_copy(t, Nx.BinaryBackend)
  end

  defp compare(fun, args, tol \\ 1.0e-4) do
    want =
      Nx.with_default_backend(Nx.BinaryBackend, fn ->
        Nx.Defn.jit_apply(fun, args, compiler: Nx.Defn.Evaluator)
      end)

    emlx_args = Enum.map(args, &Nx.backend_copy(&1, EMLX.Backend))
    got = Nx.Defn.jit_apply(fun, emlx_args, compiler: EMLX)

    [got, want]
    |> Enum.map(&Nx.Defn.Composite.flatten_list([&1]))
    |> Enum.zip()
    |> Enum.each(fn {g, w} -> assert_tensor(g, w, tol: tol) end)
  end

  describe "gradients match Nx.Defn.Evaluator" do
    test "value_and_grad of an MLP" do
      params = {random({16, 32}, 1), random({32}, 2), random({32, 10}, 3), random({10}, 4)}
      x = random({8, 16}, 5)
      y = Nx.iota({8, 10}) |> Nx.remainder(10) |> Nx.equal(0) |> Nx.as_type(:f32)
      compare(&mlp_grad/3, [params, x, Nx.backend_copy(y, Nx.BinaryBackend)])
    end

    test "value_and_grad of a conv net" do
      params = {random({4, 3, 3, 3}, 6), random({4}, 7)}
      compare(&conv_grad/2, [params, random({2, 3, 8, 8}, 8)], 1.0e-3)
    end

    test "value_and_grad of an attention block" do
      params = {random({8, 8}, 9), random({8, 8}, 10), random({8, 8}, 11)}
      compare(&attention_grad/2, [params, random({2, 5, 8}, 12)], 1.0e-3)
    end
  end

  defn reduce_with(t, fun), do: Nx.reduce(t, 1, [axes: [1]], fun)
  defn window_reduce_with(t), do: Nx.window_reduce(t, 0, {2}, fn x, acc -> max(x, acc) * 1 end)

  # Inside defn, Nx's evaluator hands reduce a closure over a body traced
  # with scalars (issue 14: Nx's own suite, "window reduce" and "calls
  # external anonymous function via reduce").
  describe "reduce and window_reduce with a function inside defn" do
    test "on the eager evaluator and the compiler" do
      x = Nx.backend_copy(Nx.tensor([[1, 2, 3], [4, 5, 6]], type: :s32), EMLX.Backend)
      w = Nx.backend_copy(Nx.tensor([1, 5, 3]), EMLX.Backend)
      product = fn t -> reduce_with(t, &Nx.add(Nx.multiply(&1, &2), 0)) end
      sum = fn t -> reduce_with(t, &Nx.add/2) end

      for compiler <- [Nx.Defn.Evaluator, EMLX] do
        assert Nx.to_list(Nx.Defn.jit(product, compiler: compiler).(x)) == [6, 120]
        assert Nx.to_list(Nx.Defn.jit(sum, compiler: compiler).(x)) == [7, 16]
        assert Nx.to_list(Nx.Defn.jit(&window_reduce_with/1, compiler: compiler).(w)) == [5, 5]
      end
    end
  end

  # (the argument moved to MLX with its vectorized shape only, from a
  # binary that holds every entry: "binary of 8 bytes does not match the
  # shape and type"; found by test/emlx/defn_fuzz_test.exs)
  test "a vectorized argument of another backend" do
    p = Nx.tensor([1.0, 0.0], backend: Nx.BinaryBackend) |> Nx.vectorize(:v)
    x = Nx.tensor([[1.0, 2.0], [3.0, 4.0]], backend: Nx.BinaryBackend) |> Nx.vectorize(:v)
    f = fn p, x -> Nx.select(Nx.greater(p, 0.5), Nx.add(x, 1), Nx.multiply(x, 2)) end
    got = Nx.Defn.jit_apply(f, [p, x], compiler: EMLX)
    assert got.vectorized_axes == [v: 2]
    assert Nx.to_list(Nx.devectorize(got)) == [[2.0, 3.0], [6.0, 8.0]]
  end

  # The same node seen as a vectorized and as a devectorized tensor keeps
  # both shapes (issue 14: Nx's "mixed vectorized axes" grad tests).
  test "grad over tensors vectorized on different axes" do
    x = Nx.tensor([[1.0, 2.0], [3.0, 4.0]], backend: Nx.BinaryBackend) |> Nx.vectorize(:x)
    y = Nx.tensor([10.0, 20.0], backend: Nx.BinaryBackend) |> Nx.vectorize(:y)

    for op <- [&Nx.add/2, &Nx.multiply/2] do
      grad = fn x, y -> Nx.Defn.grad({x, y}, fn {a, b} -> op.(a, b) end) end
      {wx, wy} = Nx.with_default_backend(Nx.BinaryBackend, fn -> grad.(x, y) end)
      assert %Nx.BinaryBackend{} = wx.data
      on_emlx = &Nx.backend_copy(&1, EMLX.Backend)
      {gx, gy} = Nx.Defn.jit(grad, compiler: EMLX).(on_emlx.(x), on_emlx.(y))
      assert gx.vectorized_axes == [x: 2, y: 2] and gy.vectorized_axes == [x: 2, y: 2]
      assert_tensor(Nx.devectorize(gx), Nx.devectorize(wx))
      assert_tensor(Nx.devectorize(gy), Nx.devectorize(wy))
    end
  end

  # Issue 14 (Nx's "window reduce (sum of squares)"): a window's values fold
  # into the accumulator in order, so a function that is not associative
  # gives Nx's result.
  test "window_reduce with a function that is not associative" do
    t = Nx.iota({4, 4}, type: :f32, backend: Nx.BinaryBackend)
    opts = [padding: :same, strides: [2, 2]]
    f = &Nx.window_reduce(&1, 0.0, {3, 3}, opts, fn x, acc -> Nx.add(acc, Nx.multiply(x, x)) end)

    assert_tensor(
      f.(Nx.backend_copy(t, EMLX.Backend)),
      Nx.with_default_backend(Nx.BinaryBackend, fn -> f.(t) end)
    )

    assert Nx.to_list(f.(Nx.backend_copy(t, EMLX.Backend))) == [[42.0, 124.0], [499.0, 1002.0]]
  end

  describe "caching" do
    test "Nx.Defn.compile, default options and the application config" do
      compiled =
        Nx.Defn.compile(&Nx.add(&1, &2), [Nx.template({2}, :f32), Nx.template({2}, :f32)],
          compiler: EMLX
        )

      assert Nx.to_list(compiled.(emlx([1.0, 2.0]), emlx([3.0, 4.0]))) == [4.0, 6.0]
      assert Nx.to_list(compiled.(emlx([0.5, 0.5]), emlx([3.0, 4.0]))) == [3.5, 4.5]

      Nx.Defn.default_options(compiler: EMLX)

      try do
        assert Nx.to_list(Nx.Defn.jit(&Nx.subtract/2).(emlx([3, 4]), emlx([1, 1]))) == [2, 3]
      after
        Nx.Defn.default_options([])
      end
    end

    test "inputs from Nx.BinaryBackend and constants captured in the function" do
      c = Nx.tensor([10.0, 20.0], backend: Nx.BinaryBackend)
      jit = Nx.Defn.jit(fn x -> Nx.add(x, c) end, compiler: EMLX)
      assert Nx.to_list(jit.(Nx.tensor([1.0, 2.0], backend: Nx.BinaryBackend))) == [11.0, 22.0]
      assert Nx.to_list(jit.(Nx.tensor([2.0, 3.0], backend: Nx.BinaryBackend))) == [12.0, 23.0]
    end

    test "the same tensor passed twice stays two parameters" do
      jit = Nx.Defn.jit(&Nx.subtract/2, compiler: EMLX)
      x = emlx([5, 6])
      assert Nx.to_list(jit.(x, x)) == [0, 0]
      assert Nx.to_list(jit.(x, emlx([1, 1]))) == [4, 5]
    end
  end

  # A start known on the host (a constant, an argument) makes a static slice;
  # one computed in the graph is clamped on the stream. Both clamp as Nx does.
  test "slice and put_slice with starts computed in the graph and starts from arguments" do
    t = Nx.iota({4, 6}, type: :f32)
    u = Nx.tensor([[-1.0, -2.0, -3.0]])

    for type <- [:s32, :s64, :u8, :u32, :u64], {i, j} <- [{0, 0}, {2, 1}, {3, 5}, {9, 200}] do
      {si, sj} = {Nx.tensor(i, type: type), Nx.tensor(j, type: type)}

      computed = fn t, u, i, j ->
        # (i + 2) - 2 is computed in the graph: a lazy start
        i = Nx.subtract(Nx.add(i, 2), 2)
        j = Nx.subtract(Nx.add(j, 2), 2)
        {Nx.slice(t, [i, j], [2, 3]), Nx.put_slice(t, [i, j], u)}
      end

      given = fn t, u, i, j -> {Nx.slice(t, [i, j], [2, 3]), Nx.put_slice(t, [i, j], u)} end

      for fun <- [computed, given] do
        want = fun.(t, u, si, sj)
        got = Nx.Defn.jit(fun, compiler: EMLX).(emlx(t), emlx(u), emlx(si), emlx(sj))

        assert Nx.to_binary(elem(got, 0)) == Nx.to_binary(elem(want, 0)),
               "slice at #{i},#{j} #{type}"

        assert Nx.to_binary(elem(got, 1)) == Nx.to_binary(elem(want, 1)),
               "put_slice at #{i},#{j} #{type}"
      end
    end

    # strided, at starts from arguments and from the graph
    strided = fn t, i ->
      {Nx.slice(t, [i, 1], [3, 5], strides: [2, 2]),
       Nx.slice(t, [Nx.add(i, 1), 0], [2, 4], strides: [1, 3])}
    end

    for i <- [0, 1, 7] do
      si = Nx.tensor(i)
      want = strided.(t, si)
      got = Nx.Defn.jit(strided, compiler: EMLX).(emlx(t), emlx(si))
      assert Nx.to_binary(elem(got, 0)) == Nx.to_binary(elem(want, 0))
      assert Nx.to_binary(elem(got, 1)) == Nx.to_binary(elem(want, 1))
    end

    # a negative start is clamped to 0
    neg = Nx.tensor(-3)

    got =
      Nx.Defn.jit(&Nx.put_slice(&1, [Nx.subtract(Nx.add(&2, 2), 2), &2], &3), compiler: EMLX).(
        emlx(t),
        emlx(neg),
        emlx(u)
      )

    assert Nx.to_binary(got) == Nx.to_binary(Nx.put_slice(t, [neg, neg], u))
  end

  describe "control flow and side effects" do
    defn count_up(x) do
      {_, acc, _} =
        while {i = 0, acc = x, n = Nx.sum(x)}, i < n do
          {i + 1, acc + 1, n}
        end

      acc
    end

    test "while with a data-dependent trip count" do
      assert Nx.to_list(Nx.Defn.jit(&count_up/1, compiler: EMLX).(emlx([1, 2]))) == [4, 5]
      assert Nx.to_list(Nx.Defn.jit(&count_up/1, compiler: EMLX).(emlx([2, 3]))) == [7, 8]
    end

    defn branch(x) do
      if Nx.sum(x) > 0 do
        hook(x + 1, :positive)
      else
        hook(x - 1, :negative)
      end
    end

    test "cond evaluates only the branch taken: the other hook never runs" do
      pid = self()

      hooks = %{
        positive: &send(pid, {:positive, Nx.to_list(&1)}),
        negative: &send(pid, {:negative, Nx.to_list(&1)})
      }

      jit = Nx.Defn.jit(&branch/1, compiler: EMLX, hooks: hooks)

      assert Nx.to_list(jit.(emlx([1, 2]))) == [2, 3]
      assert_received {:positive, [2, 3]}
      refute_received {:negative, _}

      assert Nx.to_list(jit.(emlx([-1, -2]))) == [-2, -3]
      assert_received {:negative, [-2, -3]}
      refute_received {:positive, _}
    end

    def callback(t, opts) do
      send(opts[:pid], {:runtime_call, Nx.to_flat_list(t)})
      Nx.multiply(t, 2)
    end

    test "Nx.runtime_call inside defn" do
      pid = self()

      fun = fn x ->
        y = Nx.add(x, 1)
        z = Nx.runtime_call(Nx.template({2}, :s32), y, [pid: pid], &__MODULE__.callback/2)
        Nx.add(z, 1)
      end

      assert Nx.to_list(Nx.Defn.jit(fun, compiler: EMLX).(emlx([1, 2]))) == [5, 7]
      assert_received {:runtime_call, [2, 3]}
    end

    test "stop_grad and custom_grad metadata" do
      fun = fn x ->
        Nx.Defn.grad(x, fn x ->
          Nx.sum(Nx.multiply(x, Nx.Defn.Kernel.stop_grad(x)))
        end)
      end

      assert Nx.to_list(Nx.Defn.jit(fun, compiler: EMLX).(emlx([1.0, 2.0]))) == [1.0, 2.0]
    end

    test "Nx.Random inside defn matches the evaluator" do
      fun = fn key -> Nx.Random.uniform_split(key, 0.0, 1.0, shape: {4}) end
      key = Nx.Random.key(7) |> Nx.backend_copy(Nx.BinaryBackend)
      compare(fun, [key], 1.0e-6)
    end

    test "vectorized inputs" do
      x = Nx.vectorize(emlx([[1, 2], [3, 4]]), :rows)
      got = Nx.Defn.jit(&Nx.sum(Nx.multiply(&1, 2)), compiler: EMLX).(x)
      assert got.vectorized_axes == [rows: 2]
      assert Nx.to_flat_list(got) == [6, 14]
    end
  end

  describe "compiled CPU kernels" do
    test "SIGCHLD is not ignored, so MLX's JIT can run the C++ compiler" do
      [mask] =
        File.read!("/proc/self/status")
        |> String.split("\n")
        |> Enum.flat_map(fn
          "SigIgn:" <> hex -> [String.to_integer(String.trim(hex), 16)]
          _ -> []
        end)

      # SIGCHLD is signal 17 on Linux
      assert Bitwise.band(mask, Bitwise.bsl(1, 16)) == 0
    end

    test "an element-wise chain is fused into one JIT-compiled kernel" do
      # (MLX's own ops: EMLX's float32 transcendental kernels on the CPU,
      # sinh or exp say, are not MLX's, and MLX's JIT does not fuse them)
      fun = fn x ->
        Nx.sqrt(Nx.max(Nx.add(Nx.multiply(Nx.abs(x), 3.0), 7.0), Nx.divide(x, 4096)))
      end

      # MLX's CPU JIT, so on the CPU device whatever the test device is
      cpu = {EMLX.Backend, device: :cpu}
      x = Nx.iota({2048}, type: :f32, backend: cpu)
      want = Nx.with_default_backend(cpu, fn -> fun.(x) end)
      got = Nx.Defn.jit(fun, compiler: EMLX, device: :cpu).(x)
      assert_tensor(got, Nx.backend_copy(want, Nx.BinaryBackend), tol: 1.0e-4)

      kernels =
        Path.wildcard(
          Path.join(System.tmp_dir!(), "mlx/*/cpu/lib*Abs*Multiply*Add*Maximum*Sqrt*.so")
        )

      assert kernels != [], "no fused kernel was built by MLX's CPU JIT"
    end
  end

  describe "fuse: false" do
    test "replays the plan's ops one by one: same values, no fused kernel" do
      # (MLX's own element-wise ops: EMLX's float32 transcendental kernels on
      # the CPU are not MLX's, and MLX's JIT does not fuse them)
      fun = fn x -> Nx.sqrt(Nx.abs(Nx.negate(Nx.divide(x, 8192)))) end
      cpu = {EMLX.Backend, device: :cpu}
      x = Nx.iota({4096}, type: :f32, backend: cpu)
      want = Nx.with_default_backend(cpu, fn -> fun.(x) end) |> Nx.to_binary()

      fused = fn ->
        Path.wildcard(Path.join(System.tmp_dir!(), "mlx/*/cpu/lib*Negative*Abs*Sqrt*.so"))
      end

      # MLX's on-disk kernel cache may hold it from an earlier run
      Enum.each(fused.(), &File.rm!/1)

      plain = Nx.Defn.jit(fun, compiler: EMLX, device: :cpu, fuse: false)
      assert Nx.to_binary(plain.(x)) == want
      assert Nx.to_binary(plain.(x)) == want
      assert fused.() == []

      # the same function fused: its own plan, and MLX's JIT builds the kernel
      got = Nx.Defn.jit(fun, compiler: EMLX, device: :cpu).(x)
      assert_tensor(got, Nx.from_binary(want, :f32), tol: 1.0e-5)
      assert fused.() != []
    end
  end

  describe "programs that cannot be traced" do
    test "replay plainly (triangular_solve reads data for its singular check); a genuine error raises" do
      f = Nx.Defn.jit(fn a, b -> Nx.LinAlg.triangular_solve(a, b) end, compiler: EMLX)
      a = emlx([[2.0, 0.0], [1.0, 4.0]])
      assert Nx.to_list(f.(a, emlx([2.0, 9.0]))) == [1.0, 2.0]
      assert Nx.to_list(f.(a, emlx([4.0, 6.0]))) == [2.0, 1.0]

      assert_raise ArgumentError, ~r/singular/, fn ->
        f.(emlx([[0.0, 0.0], [1.0, 4.0]]), emlx([4.0, 6.0])) |> Nx.to_list()
      end

      assert Nx.to_list(f.(a, emlx([2.0, 9.0]))) == [1.0, 2.0]
    end
  end

  describe "empty arrays under mx::compile" do
    # MLX 0.32's CUDA fused kernel divides by zero launching over no elements
    # (SIGFPE, found by EMLX.FuzzTest on the H200): on :gpu such a run
    # replays plainly. Nx has no empty tensors; EMLX's arrays can be.
    setup do
      q = EMLX.Application.default_worker(device())
      empty = EMLX.Worker.from_binary(q, <<>>, {3, 0}, {:f, 32})
      {:ok, q: q, empty: empty}
    end

    test "a compiled program over an empty input", %{q: q, empty: e} do
      {_, x} = EMLX.Backend.from_nx(emlx(Nx.iota({2, 2}, type: :u8)))
      p = EMLX.NIF.program_new(q, [{:erf, [1], {:u, 16}}, {:multiply, [2, 2], nil}], 2, [3, 0])

      for compile <- [true, false, true] do
        [y, x2] = EMLX.NIF.program_run(q, p, [x, e], compile) |> EMLX.Worker.await()

        assert elem(EMLX.Worker.info(y), 0) == {3, 0}
        assert read(q, y) == <<>>

        assert elem(EMLX.Worker.info(x2), 0) == {2, 2}
      end

      # the same compiled program then runs over elements
      {_, z} = EMLX.Backend.from_nx(emlx(Nx.broadcast(0.0, {1, 2})))
      [y, _] = EMLX.NIF.program_run(q, p, [x, z], true) |> EMLX.Worker.await()
      assert read(q, y) == <<0::16, 0::16>>
    end

    test "all and any over an empty axis: a fused kernel over no elements inside one op",
         %{q: q, empty: e} do
      # (their comparison with zero is fused with the reduction's input under
      # mx::compile: on the GPU the run replays plainly)
      for {op, want} <- [all: <<1, 1, 1>>, any: <<0, 0, 0>>], compile <- [true, false] do
        p = EMLX.NIF.program_new(q, [{op, [0, [1], false], nil}], 1, [1])
        [y] = EMLX.NIF.program_run(q, p, [e], compile) |> EMLX.Worker.await()
        assert read(q, y) == want
      end
    end

    test "every element-wise op and reduction of the op table, eager and compiled",
         %{q: q, empty: e} do
      # each call returns its result's bytes, or raises as a bad argument
      # or an MLX error (an integer-only op on f32, say); none may crash
      outcome = fn f ->
        try do
          {:ok, f.()}
        rescue
          error in [ArgumentError, EMLX.NIFError] -> {:raised, error}
        end
      end

      program = fn instrs, inputs ->
        p = EMLX.NIF.program_new(q, instrs, length(inputs), [length(inputs)])
        [y] = EMLX.NIF.program_run(q, p, inputs, true) |> EMLX.Worker.await()
        read(q, y)
      end

      calls =
        Enum.flat_map(EMLX.Ops.unary(), fn op ->
          [
            fn -> read(q, EMLX.Worker.run_op(q, op, [e], nil)) end,
            fn -> program.([{op, [0], nil}], [e]) end
          ]
        end) ++
          Enum.flat_map(EMLX.Ops.binary(), fn op ->
            [
              fn -> read(q, EMLX.Worker.run_op(q, op, [e, e], nil)) end,
              fn -> program.([{op, [0, 1], nil}, {:exp, [2], nil}], [e, e]) end
            ]
          end)

      results = Enum.map(calls, outcome)
      assert Enum.all?(results, &(match?({:ok, <<>>}, &1) or match?({:raised, _}, &1)))
      assert Enum.count(results, &match?({:ok, _}, &1)) > 100

      # reductions: over the empty axis (3 results) and over the other (none)
      for op <- EMLX.Ops.with_signature("aIb") do
        over_empty = outcome.(fn -> read(q, EMLX.Worker.run_op(q, op, [e, [1], false], nil)) end)
        over_other = outcome.(fn -> read(q, EMLX.Worker.run_op(q, op, [e, [0], false], nil)) end)

        assert match?({:raised, _}, over_empty) or
                 (match?({:ok, b} when b != <<>>, over_empty) and
                    rem(byte_size(elem(over_empty, 1)), 3) == 0),
               "#{op}: #{inspect(over_empty)}"

        assert over_other == {:ok, <<>>} or match?({:raised, _}, over_other),
               "#{op}: #{inspect(over_other)}"
      end
    end

    test "EMLX.Fast's swiglu over an empty array", %{q: q, empty: e} do
      y = EMLX.Worker.run_op(q, :fast_swiglu, [e, e], nil)
      assert read(q, y) == <<>>
    end
  end

  defp read(q, array), do: EMLX.NIF.to_binary(q, array, 64) |> EMLX.Worker.await()

  describe "queues and devices" do
    test ":command_queue runs the program on that queue" do
      q = EMLX.CommandQueue.new!(device())
      got = Nx.Defn.jit(&Nx.add(&1, 1), compiler: EMLX, command_queue: q).(emlx([1, 2]))
      assert got.data.queue == q.ref
      assert Nx.to_list(got) == [2, 3]
    end

    test "__to_backend__ and __partitions_options__" do
      assert EMLX.__to_backend__(device: device()) == {EMLX.Backend, [device: device()]}
      parts = EMLX.__partitions_options__(device: device(), max_concurrency: 3)
      assert length(parts) == 3
      assert parts |> Enum.map(& &1[:command_queue].ref) |> Enum.uniq() |> length() == 3
    end
  end
end
