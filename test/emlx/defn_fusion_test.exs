defmodule EMLX.DefnFusionTest do
  use EMLX.Case, async: true
  import Nx.Defn

  alias EMLX.Defn.Fusion

  defn softmax(x) do
    e = Nx.exp(x - Nx.reduce_max(x, axes: [-1], keep_axes: true))
    e / Nx.sum(e, axes: [-1], keep_axes: true)
  end

  # Axon's activation: the max under stop_grad, over axis 0 here
  defn softmax_first_axis(x) do
    max = x |> Nx.reduce_max(axes: [0], keep_axes: true) |> stop_grad()
    e = Nx.exp(x - max)
    e / Nx.sum(e, axes: [0], keep_axes: true)
  end

  # the exp is an output too: the softmax is fused, the exp still computed
  defn softmax_and_exp(x) do
    e = Nx.exp(x - Nx.reduce_max(x, axes: [1], keep_axes: true))
    {e / Nx.sum(e, axes: [1], keep_axes: true), e}
  end

  # the shape of softmax with other axes for the max and the sum: not fused
  defn mismatched(x) do
    e = Nx.exp(x - Nx.reduce_max(x, axes: [0], keep_axes: true))
    e / Nx.sum(e, axes: [1], keep_axes: true)
  end

  # Axon's log_softmax: -log(sum(exp(s))) + s
  defn axon_log_softmax(x) do
    shifted = x - stop_grad(Nx.reduce_max(x, axes: [1], keep_axes: true))

    shifted
    |> Nx.exp()
    |> Nx.sum(axes: [1], keep_axes: true)
    |> Nx.log()
    |> Nx.negate()
    |> Nx.add(shifted)
  end

  defn log_softmax(x) do
    s = x - Nx.reduce_max(x, axes: [-1], keep_axes: true)
    s - Nx.log(Nx.sum(Nx.exp(s), axes: [-1], keep_axes: true))
  end

  defn logsumexp(x), do: Nx.logsumexp(x, axes: [1])

  # Axon's layer_norm (its mean_and_variance and normalize), over the last axis
  defn axon_layer_norm(x) do
    {gamma, beta} = norm_params(x)
    mean = Nx.mean(x, axes: [-1], keep_axes: true)
    var = Nx.variance(x, axes: [-1], keep_axes: true)
    scale = gamma * Nx.rsqrt(var + 1.0e-5)
    scale * (x - mean) + beta
  end

  # the plain form, over the first axis (MLX's kernel normalizes the last
  # only: the fused op composes it)
  defn layer_norm_first_axis(x) do
    {gamma, beta} = norm_params(Nx.transpose(x))
    c = x - Nx.mean(x, axes: [0], keep_axes: true)
    var = Nx.mean(c * c, axes: [0], keep_axes: true)
    c * Nx.rsqrt(var + 1.0e-5) * Nx.transpose(gamma) + Nx.transpose(beta)
  end

  # RMS norm as Llama-style models write it, the weight first
  defn rms_norm(x) do
    {w, _} = norm_params(x)
    w * (x * Nx.rsqrt(Nx.mean(Nx.pow(x, 2), axes: [-1], keep_axes: true) + 1.0e-6))
  end

  defnp norm_params(x) do
    d = Nx.axis_size(x, -1)
    gamma = Nx.iota({1, d}, type: Nx.type(x)) / d + 0.5
    {gamma, Nx.iota({1, d}, type: Nx.type(x)) / d - 0.25}
  end

  # programs as recorded: operands {:in, i} and {:out, j}
  @x {:in, 0}
  @softmax [
    {:reduce_max, [@x, [1], true], {:f, 32}},
    {:subtract, [@x, {:out, 0}], {:f, 32}},
    {:exp, [{:out, 1}], {:f, 32}},
    {:sum, [{:out, 2}, [1], true], {:f, 32}},
    {:divide, [{:out, 2}, {:out, 3}], {:f, 32}}
  ]

  defp rewrite(instrs, outputs \\ nil),
    do: Fusion.rewrite(instrs, outputs || [{:out, length(instrs) - 1}])

  test "the softmax pattern becomes one softmax in place of the divide, every slot kept" do
    fused = List.replace_at(@softmax, 4, {:softmax, [@x, [1]], {:f, 32}})
    assert rewrite(@softmax) == fused

    # on the CPU float32 stays composed (EMLX's exp there is Nx's); bf16 fuses
    out = [{:out, 4}]
    assert Fusion.rewrite(@softmax, out, :cpu) == @softmax
    bf16 = Enum.map(@softmax, fn {op, args, _} -> {op, args, {:bf, 16}} end)
    assert List.last(Fusion.rewrite(bf16, out, :cpu)) == {:softmax, [@x, [1]], {:bf, 16}}

    # other axes for the sum, another input for the max, an integer type: as is
    other_axes = List.replace_at(@softmax, 3, {:sum, [{:out, 2}, [0], true], {:f, 32}})
    assert rewrite(other_axes) == other_axes
    other_input = List.replace_at(@softmax, 0, {:reduce_max, [{:in, 1}, [1], true], {:f, 32}})
    assert rewrite(other_input) == other_input
    ints = Enum.map(@softmax, fn {op, args, _} -> {op, args, {:s, 32}} end)
    assert rewrite(ints) == ints

    # an intermediate result used elsewhere (an output, as a gradient's
    # would be): it is computed anyway, so the pattern stays
    assert rewrite(@softmax, [{:out, 4}, {:out, 2}]) == @softmax

    assert rewrite(@softmax ++ [{:multiply, [{:out, 1}, {:out, 1}], {:f, 32}}]) ==
             @softmax ++ [{:multiply, [{:out, 1}, {:out, 1}], {:f, 32}}]

    # log_softmax in both forms, Nx.logsumexp's form
    shifted = Enum.take(@softmax, 4)
    log = {:log, [{:out, 3}], {:f, 32}}
    plain = shifted ++ [log, {:subtract, [{:out, 1}, {:out, 4}], {:f, 32}}]
    assert List.last(rewrite(plain)) == {:log_softmax, [@x, [1]], {:f, 32}}

    axon =
      shifted ++ [log, {:negate, [{:out, 4}], {:f, 32}}, {:add, [{:out, 5}, {:out, 1}], {:f, 32}}]

    assert List.last(rewrite(axon)) == {:log_softmax, [@x, [1]], {:f, 32}}

    lse = [
      {:reduce_max, [@x, [1], true], {:f, 32}},
      {:is_infinity, [{:out, 0}], {:u, 8}},
      {:full, [0.0, {}, {:f, 32}], {:f, 32}},
      {:select, [{:out, 1}, {:out, 2}, {:out, 0}], {:f, 32}},
      {:subtract, [@x, {:out, 3}], {:f, 32}},
      {:exp, [{:out, 4}], {:f, 32}},
      {:sum, [{:out, 5}, [1], true], {:f, 32}},
      {:log, [{:out, 6}], {:f, 32}},
      {:add, [{:out, 7}, {:out, 3}], {:f, 32}}
    ]

    assert List.last(rewrite(lse)) == {:logsumexp, [@x, [1], true], {:f, 32}}
    # a max whose infinities are not zeroed is not Nx.logsumexp's
    one = List.replace_at(lse, 2, {:full, [1.0, {}, {:f, 32}], {:f, 32}})
    assert rewrite(one) == one

    # layer norm, (x - mean) * rsqrt(var + eps) * g + b
    f32 = {:f, 32}
    count = {:full, [8, {}, {:s, 32}], {:s, 32}}

    ln = [
      {:sum, [@x, [1], true], f32},
      count,
      {:divide, [{:out, 0}, {:out, 1}], f32},
      {:subtract, [@x, {:out, 2}], f32},
      {:full, [1.0e-5, {}, f32], f32},
      {:multiply, [{:out, 3}, {:out, 3}], f32},
      {:sum, [{:out, 5}, [1], true], f32},
      count,
      {:divide, [{:out, 6}, {:out, 7}], f32},
      {:add, [{:out, 8}, {:out, 4}], f32},
      {:rsqrt, [{:out, 9}], f32},
      {:multiply, [{:out, 3}, {:out, 10}], f32},
      {:multiply, [{:out, 11}, {:in, 1}], f32},
      {:add, [{:out, 12}, {:in, 2}], f32}
    ]

    assert List.last(rewrite(ln)) ==
             {:layer_norm_pattern, [@x, {:in, 1}, {:in, 2}, [1], 8, 1.0e-5], f32}

    assert List.last(Fusion.rewrite(ln, [{:out, 13}], :cpu)) == List.last(rewrite(ln))

    # the centred input is an output too: no layer norm (its scaled part,
    # c * rsqrt(mean(c^2) + eps) * g, is an RMS norm of c, and becomes one)
    assert List.last(rewrite(ln, [{:out, 13}, {:out, 3}])) == List.last(ln)

    assert Enum.at(rewrite(ln, [{:out, 13}, {:out, 3}]), 12) ==
             {:rms_norm_pattern, [{:out, 3}, {:in, 1}, [1], 8, 1.0e-5], f32}

    # a count that is not the mean's
    other_count = List.replace_at(ln, 7, {:full, [7, {}, {:s, 32}], {:s, 32}})
    assert List.last(rewrite(other_count)) == List.last(ln)

    # RMS norm, x * rsqrt(mean(x^2) + eps) * w
    rms = [
      {:full, [1.0e-6, {}, f32], f32},
      {:multiply, [@x, @x], f32},
      {:sum, [{:out, 1}, [1], true], f32},
      count,
      {:divide, [{:out, 2}, {:out, 3}], f32},
      {:add, [{:out, 4}, {:out, 0}], f32},
      {:rsqrt, [{:out, 5}], f32},
      {:multiply, [@x, {:out, 6}], f32},
      {:multiply, [{:out, 7}, {:in, 1}], f32}
    ]

    assert List.last(rewrite(rms)) == {:rms_norm_pattern, [@x, {:in, 1}, [1], 8, 1.0e-6], f32}
    # the normalized input scaled by something other than x: as is
    other = List.replace_at(rms, 7, {:multiply, [{:in, 2}, {:out, 6}], f32})
    assert rewrite(other) == other

    # results are numbered past multi-result ops and loops by their counts
    for first <- [
          {:qr, [{:in, 1}, false], {:f, 32}},
          {:while, [[{:in, 1}, {:in, 2}], nil, [], nil, []], 2}
        ] do
      shifted = [first | Enum.map(@softmax, &shift(&1, 2))]
      assert List.last(rewrite(shifted, [{:out, 6}])) == {:softmax, [@x, [1]], {:f, 32}}
    end
  end

  test "a dot whose only use is a transpose becomes one dot_transposed" do
    f32 = {:f, 32}
    dot = {:dot, [{:in, 0}, [0], [], {:in, 1}, [0], []], f32}
    prog = [dot, {:transpose, [{:out, 0}, [1, 0]], nil}]

    assert List.last(rewrite(prog)) ==
             {:dot_transposed, [{:in, 0}, [0], [], {:in, 1}, [0], [], [1, 0]], f32}

    # the product used elsewhere too: it is computed anyway, so as is
    assert rewrite(prog, [{:out, 1}, {:out, 0}]) == prog
    # a transpose of something else: as is
    other = [{:exp, [{:in, 0}], f32}, {:transpose, [{:out, 0}, [1, 0]], nil}]
    assert rewrite(other) == other
  end

  # The gradient of x . w transposes a product (the swapped dot), and a
  # vector-by-rank-3 dot transposed is not the swapped product (as is).
  defn dot_grad(x, w), do: grad(w, &Nx.sum(Nx.exp(Nx.dot(x, &1))))
  defn vector_dot_t(v, t), do: Nx.transpose(Nx.dot(v, [0], t, [1])) * 2

  defn batched_dot_t(a, b),
    do: Nx.transpose(Nx.dot(a, [2], [0], b, [1], [0]), axes: [0, 2, 1]) + 1

  test "transposed products agree with the composed ops" do
    key = Nx.Random.key(3)
    {x, key} = Nx.Random.uniform(key, -1.0, 1.0, shape: {5, 7}, type: :f32)
    {w, key} = Nx.Random.uniform(key, -1.0, 1.0, shape: {7, 3}, type: :f32)
    {v, key} = Nx.Random.uniform(key, -1.0, 1.0, shape: {4}, type: :f32)
    {t, key} = Nx.Random.uniform(key, -1.0, 1.0, shape: {2, 4, 3}, type: :f32)
    {a, key} = Nx.Random.uniform(key, -1.0, 1.0, shape: {2, 3, 4}, type: :f32)
    {b, _} = Nx.Random.uniform(key, -1.0, 1.0, shape: {2, 4, 5}, type: :f32)

    for {fun, args} <- [
          {&dot_grad/2, [x, w]},
          {&dot_grad/2, [Nx.as_type(x, :s32), Nx.as_type(w, :s32)]},
          {&vector_dot_t/2, [v, t]},
          {&batched_dot_t/2, [a, b]}
        ] do
      want = apply(fun, Enum.map(args, &Nx.backend_copy(&1, Nx.BinaryBackend)))
      got = apply(Nx.Defn.jit(fun, compiler: EMLX), args)
      assert got.shape == want.shape and got.type == want.type
      assert Nx.all_close(to_bin(got), want, atol: 1.0e-5, rtol: 1.0e-5) |> Nx.to_number() == 1
    end
  end

  # the pattern's results numbered n further
  defp shift({op, args, t}, n),
    do:
      {op,
       Enum.map(args, fn
         {:out, j} -> {:out, j + n}
         other -> other
       end), t}

  # float32: Nx.BinaryBackend's composed ops, to the rounding of a few ops;
  # bf16: the exact value (the composed ops in float64, rounded), to a
  # bf16 ulp; the fused kernels accumulate in float32 and come closer to
  # it than the composed bf16 ops (log_softmax: 0.047 against 0.119 off)
  test "compiled results agree with the composed ops" do
    {x, _} = Nx.Random.normal(Nx.Random.key(7), 0.0, 3.0, shape: {6, 33}, type: :f32)

    for {fun, tol} <- [
          {&softmax/1, 1.0e-6},
          {&softmax_first_axis/1, 1.0e-6},
          {&softmax_and_exp/1, 1.0e-6},
          {&mismatched/1, 1.0e-6},
          {&axon_log_softmax/1, 1.0e-5},
          {&log_softmax/1, 1.0e-5},
          {&logsumexp/1, 1.0e-5},
          {&axon_layer_norm/1, 1.0e-5},
          {&layer_norm_first_axis/1, 1.0e-5},
          {&rms_norm/1, 1.0e-5}
        ],
        type <- [:f32, :bf16] do
      input = Nx.as_type(x, type)

      {want, atol, rtol} =
        if type == :bf16,
          do: {fun.(Nx.as_type(input, :f64)), 0.0625, 2.0 ** -7},
          else: {fun.(input), tol, tol}

      got = Nx.Defn.jit(fun, compiler: EMLX).(Nx.backend_copy(input, EMLX.Backend))

      for {g, w} <- Enum.zip(List.wrap(tuple_or(got)), List.wrap(tuple_or(want))) do
        assert g.type == {:bf, 16} or g.type == w.type
        g = g |> to_bin() |> Nx.as_type(w.type)
        assert Nx.all_close(g, w, atol: atol, rtol: rtol) |> Nx.to_number() == 1
      end
    end
  end

  test "non-finite rows give what the composed ops give" do
    t =
      Nx.tensor([
        [:infinity, 1.0, 2.0],
        [:neg_infinity, :neg_infinity, :neg_infinity],
        [:nan, 1.0, 2.0],
        [:neg_infinity, 0.0, 1.0],
        [1.0e30, -1.0e30, 0.0]
      ])

    for fun <- [&softmax/1, &log_softmax/1, &logsumexp/1] do
      want = fun.(t)
      got = Nx.Defn.jit(fun, compiler: EMLX).(Nx.backend_copy(t, EMLX.Backend))
      assert Nx.all_close(to_bin(got), want, equal_nan: true) |> Nx.to_number() == 1
    end
  end

  defn select_complex_nan(x), do: Nx.select(Nx.real(x) > 0, Complex.new(:nan, :nan), x * 2 + 1)
  defn select_complex_inf(x), do: Nx.select(Nx.real(x) > 0, Complex.new(:infinity, 0), x * 2 + 1)

  # MLX writes a complex literal of a fused kernel as complex64_t(nan, nan),
  # which does not compile: such constants are made from their parts.
  test "complex constants with non-finite parts in a fused kernel" do
    x = emlx([Complex.new(1, 2), Complex.new(-1, 0)], type: :c64)

    for fun <- [&select_complex_nan/1, &select_complex_inf/1] do
      want = fun.(to_bin(x))
      got = Nx.Defn.jit(fun, compiler: EMLX).(x)
      assert Nx.to_list(to_bin(got)) |> inspect() == Nx.to_list(want) |> inspect()
    end
  end

  defn complex_abs_chain(z), do: Nx.abs(z) * 2 + 1
  defn complex_norm(z), do: Nx.LinAlg.norm(z)

  # mx::abs of a complex tensor ends in an AsType to float32, which MLX's
  # CUDA fused-kernel generator cannot compile: on the GPU EMLX computes
  # |z| from the parts (Nx.LinAlg.norm's doctest raised on :gpu).
  test "a complex abs inside a fused kernel" do
    z = emlx([Complex.new(0, 3), Complex.new(4, 0), Complex.new(-3, -4)], type: :c64)

    for fun <- [&complex_abs_chain/1, &complex_norm/1] do
      want = fun.(to_bin(z))
      got = Nx.Defn.jit(fun, compiler: EMLX).(z)
      assert got.type == want.type
      assert Nx.all_close(to_bin(got), want) |> Nx.to_number() == 1
    end

    assert Nx.to_list(to_bin(Nx.abs(z))) == [3.0, 4.0, 5.0]

    # zero, huge parts (no overflow in between), an infinite and a NaN part
    special = [
      Complex.new(0, 0),
      Complex.new(3.0e30, 4.0e30),
      Complex.new(:infinity, 1),
      Complex.new(:nan, :infinity),
      Complex.new(:nan, 2)
    ]

    z = emlx(special, type: :c64)
    got = Nx.Defn.jit(&complex_abs_chain/1, compiler: EMLX).(z)
    want = Nx.tensor([1.0, 1.0e31, :infinity, :infinity, :nan], type: :f32)
    assert Nx.all_close(to_bin(got), want, equal_nan: true) |> Nx.to_number() == 1
    assert Nx.to_list(to_bin(got)) |> Enum.drop(2) == [:infinity, :infinity, :nan]
  end

  defp tuple_or(t) when is_tuple(t), do: Tuple.to_list(t)
  defp tuple_or(t), do: t
end
