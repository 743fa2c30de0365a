defmodule EMLX.FastTest do
  @moduledoc """
  EMLX.Fast against its plain-Nx reference on Nx.BinaryBackend: eagerly,
  under `compiler: EMLX` (one recorded instruction), in `defn`, through
  `Nx.Defn.grad/2`, and with bad input.
  """
  use EMLX.Case, async: true

  # With MLX's kernel cache empty (a new machine), the suite's other files
  # keep the C++ compiler busy (356 kernels, about a second each on two
  # cores) and rope/6's reference, read step by step, waited past the
  # default 60 s once (session 24). Slow then, not stuck.
  @moduletag timeout: 300_000

  import Nx.Defn

  alias EMLX.Defn.Recorder
  alias EMLX.Fast

  defp backend, do: {EMLX.Backend, device: device()}

  defp rand(shape, seed, type \\ :f32) do
    {t, _} = Nx.Random.normal(Nx.Random.key(seed), shape: shape, type: :f32)
    Nx.as_type(t, type)
  end

  defp on_emlx(t), do: Nx.backend_copy(t, backend())

  # The ops `fun` posts to MLX (recorded, not run).
  defp recorded_ops(fun) do
    queue = EMLX.CommandQueue.resolve(device())
    {_, rec} = Recorder.with_recorder(queue, device(), fun)
    rec.instrs |> Enum.reverse() |> Enum.map(&elem(&1, 0))
  end

  defp tol({:f, 32}), do: 1.0e-4
  defp tol({:f, 16}), do: 2.0e-2
  defp tol({:bf, 16}), do: 6.0e-2
  defp tol({:f, 64}), do: 1.0e-9

  # `f` (a function of tensors) on EMLX, eagerly and compiled, equals `f`
  # on Nx.BinaryBackend (the reference); each EMLX run is the one `op`
  # (none for float64, which takes the reference).
  defp check(f, tensors, op) do
    want = apply(f, tensors)
    em = Enum.map(tensors, &on_emlx/1)
    tol = tol(want.type)
    jit = Nx.Defn.jit(f, compiler: EMLX)

    assert_tensor(apply(f, em), want, tol: tol)
    assert_tensor(apply(jit, em), want, tol: tol)

    if want.type == {:f, 64} do
      refute op in recorded_ops(fn -> apply(f, em) end)
      refute op in recorded_ops(fn -> apply(jit, em) end)
    else
      assert recorded_ops(fn -> apply(f, em) end) == [op]
      assert recorded_ops(fn -> apply(jit, em) end) == [op]
    end
  end

  # The gradient of a loss through `f` with respect to the tensors at
  # `idx`: on EMLX (compiled and eager) equals the reference's.
  defp check_grad(f, tensors, idx) do
    gfun = fn args ->
      all = Tuple.to_list(args)
      diff = List.to_tuple(Enum.map(idx, &Enum.at(all, &1)))

      Nx.Defn.grad(diff, fn d ->
        all =
          idx
          |> Enum.zip(Tuple.to_list(d))
          |> Enum.reduce(all, fn {i, t}, acc -> List.replace_at(acc, i, t) end)

        out = apply(f, all)
        out |> Nx.multiply(Nx.cos(Nx.iota(out.shape, type: out.type))) |> Nx.sum()
      end)
    end

    want = Nx.Defn.jit(gfun).(List.to_tuple(tensors))
    em = List.to_tuple(Enum.map(tensors, &on_emlx/1))
    compiled = Nx.Defn.jit(gfun, compiler: EMLX).(em)
    eager = Nx.Defn.jit(gfun).(em)

    for {w, c, e} <-
          Enum.zip([Tuple.to_list(want), Tuple.to_list(compiled), Tuple.to_list(eager)]) do
      assert_tensor(c, w, tol: 1.0e-3)
      assert_tensor(e, w, tol: 1.0e-3)
    end
  end

  @types [:f32, :bf16, :f16, :f64]

  describe "rms_norm/3" do
    test "matches the reference" do
      for type <- @types, {shape, seed} <- [{{16}, 1}, {{3, 32}, 2}, {{2, 3, 64}, 3}] do
        h = elem(shape, tuple_size(shape) - 1)
        x = rand(shape, seed, type)
        w = rand({h}, seed + 10, type)
        check(&Fast.rms_norm(&1, &2, 1.0e-6), [x, w], :fast_rms_norm)
      end
    end

    test "gradient" do
      check_grad(&Fast.rms_norm(&1, &2, 1.0e-5), [rand({3, 16}, 1), rand({16}, 2)], [0, 1])
    end
  end

  describe "layer_norm/3 and layer_norm/4" do
    test "match the reference" do
      for type <- @types, {shape, seed} <- [{{16}, 1}, {{3, 32}, 2}, {{2, 3, 64}, 3}] do
        h = elem(shape, tuple_size(shape) - 1)

        [x, w, b] = [
          rand(shape, seed, type),
          rand({h}, seed + 1, type),
          rand({h}, seed + 2, type)
        ]

        check(&Fast.layer_norm(&1, &2, 1.0e-5), [x, w], :fast_layer_norm_no_bias)
        check(&Fast.layer_norm(&1, &2, &3, 1.0e-5), [x, w, b], :fast_layer_norm)
      end
    end

    test "gradients" do
      [x, w, b] = [rand({3, 16}, 1), rand({16}, 2), rand({16}, 3)]
      check_grad(&Fast.layer_norm(&1, &2, 1.0e-5), [x, w], [0, 1])
      check_grad(&Fast.layer_norm(&1, &2, &3, 1.0e-5), [x, w, b], [0, 1, 2])
    end
  end

  describe "rope/6" do
    test "matches the reference" do
      cases = [
        {{1, 4, 16}, 16, false, 10_000.0, 1.0, 0},
        {{2, 3, 5, 8}, 8, true, 10_000.0, 1.0, 7},
        {{2, 3, 5, 8}, 6, false, 500.0, 0.5, 3},
        {{1, 2, 6, 12}, 4, true, 1_000_000.0, 2.0, 11}
      ]

      for type <- @types,
          {{shape, dims, trad, base, scale, offset}, i} <- Enum.with_index(cases) do
        x = rand(shape, i, type)
        check(&Fast.rope(&1, dims, trad, base, scale, offset), [x], :fast_rope)
      end
    end

    test "gradient" do
      check_grad(&Fast.rope(&1, 6, false, 10_000.0, 1.0, 2), [rand({2, 3, 4, 8}, 1)], [0])
      check_grad(&Fast.rope(&1, 8, true, 10_000.0, 1.0, 2), [rand({2, 3, 4, 8}, 1)], [0])
    end

    test "a tensor offset (a scalar, or one per row) gives the integer offsets' values" do
      for type <- @types, {offset, i} <- Enum.with_index([0, 7, 11]) do
        x = rand({2, 3, 5, 8}, i, type)
        o = Nx.tensor(offset, type: :s32)
        check(&Fast.rope(&1, 8, i == 1, 10_000.0, 1.0, &2), [x, o], :fast_rope_offset)
        want = Fast.rope(x, 8, i == 1, 10_000.0, 1.0, offset)
        got = Fast.rope(on_emlx(x), 8, i == 1, 10_000.0, 1.0, on_emlx(o))
        assert_tensor(got, want, tol: tol(want.type))
      end

      # one offset per row of the first axis: row i as rope at offsets[i]
      for type <- @types do
        x = rand({2, 3, 5, 8}, 7, type)
        o = Nx.tensor([3, 9], type: :s32)
        check(&Fast.rope(&1, 8, false, 10_000.0, 1.0, &2), [x, o], :fast_rope_offset)
        got = Fast.rope(on_emlx(x), 8, false, 10_000.0, 1.0, on_emlx(o))

        for {off, i} <- Enum.with_index([3, 9]) do
          want = Fast.rope(x[i..i], 8, false, 10_000.0, 1.0, off)
          assert_tensor(got[i..i], want, tol: tol(want.type))
        end
      end

      x = rand({2, 3, 4, 8}, 1)
      check_grad(&Fast.rope(&1, 6, false, 10_000.0, 1.0, &2), [x, Nx.tensor(3)], [0])
      check_grad(&Fast.rope(&1, 6, false, 10_000.0, 1.0, &2), [x, Nx.tensor([1, 4])], [0])

      for bad <- [Nx.tensor([1, 2, 3]), Nx.tensor([[1], [2]]), Nx.tensor(1.0)] do
        assert_raise ArgumentError,
                     ~r/offset must be a 32-bit integer, an integer scalar tensor/,
                     fn ->
                       Fast.rope(on_emlx(x), 8, false, 1.0e4, 1.0, bad)
                     end
      end
    end
  end

  describe "rope_with_positions/6 and rope_with_freqs/6" do
    test "match the reference at any positions" do
      # non-sequential and left-padded positions are exact
      pos = Nx.tensor([[5, 1, 9], [0, 0, 1]])

      for type <- @types,
          {shape, dims, trad, base} <- [
            {{2, 3, 4, 8}, 8, false, 10_000.0},
            {{2, 3, 4, 8}, 4, true, 1_000_000.0},
            {{2, 3, 16}, 12, false, 500.0}
          ] do
        x = rand(shape, dims, type)

        check(
          &Fast.rope_with_positions(&1, &2, dims, trad, base, 1.0),
          [x, pos],
          :fast_rope_positions
        )

        freqs = EMLX.Fast.Reference.inv_freqs(dims, base, {:f, 32}) |> Nx.multiply(0.7)

        check(
          &Fast.rope_with_freqs(&1, &2, dims, trad, 0.5, &3),
          [x, pos, freqs],
          :fast_rope_freqs
        )
      end
    end

    test "gradients" do
      [x, pos] = [rand({2, 3, 2, 8}, 1), Nx.tensor([[0, 1, 2], [4, 5, 6]])]
      check_grad(&Fast.rope_with_positions(&1, &2, 8, false, 10_000.0, 1.0), [x, pos], [0])
      freqs = EMLX.Fast.Reference.inv_freqs(8, 100.0, {:f, 32})
      check_grad(&Fast.rope_with_freqs(&1, &2, 8, true, 1.0, &3), [x, pos, freqs], [0, 2])
    end
  end

  describe "scaled dot-product attention" do
    # {q, k} shapes: multi-head, grouped-query, single-token decode
    @qk [
      {{1, 2, 4, 8}, {1, 2, 4, 8}},
      {{2, 4, 3, 8}, {2, 2, 5, 8}},
      {{2, 4, 1, 16}, {2, 1, 6, 16}}
    ]

    test "no mask and causal match the reference" do
      for type <- @types, {{qs, ks}, i} <- Enum.with_index(@qk) do
        [q, k, v] = [rand(qs, i, type), rand(ks, i + 10, type), rand(ks, i + 20, type)]
        check(&Fast.scaled_dot_product_attention(&1, &2, &3, 0.35), [q, k, v], :fast_sdpa)

        check(
          &Fast.scaled_dot_product_attention_causal(&1, &2, &3, 0.35),
          [q, k, v],
          :fast_sdpa_causal
        )
      end
    end

    test "over a KV cache's filled prefix (cached/5) matches the reference" do
      # {queries, cache length, offset}: a decode step, a chunk, a full cache
      for type <- @types,
          {{tq, tmax, off}, i} <- Enum.with_index([{1, 6, 2}, {3, 7, 1}, {2, 5, 3}]) do
        [q, k, v] = [
          rand({2, 4, tq, 8}, i, type),
          rand({2, 2, tmax, 8}, i + 10, type),
          rand({2, 2, tmax, 8}, i + 20, type)
        ]

        f = &Fast.scaled_dot_product_attention_cached(&1, &2, &3, 0.35, &4)
        check(f, [q, k, v, Nx.tensor(off, type: :s32)], :fast_sdpa_cached)
      end
    end

    test "cached/5 equals attention over the sliced prefix, and checks its offset" do
      [q, k, v] = [rand({1, 2, 1, 8}, 1), rand({1, 2, 6, 8}, 2), rand({1, 2, 6, 8}, 3)]
      got = Fast.scaled_dot_product_attention_cached(on_emlx(q), on_emlx(k), on_emlx(v), 0.35, 3)
      prefix = &Nx.slice_along_axis(on_emlx(&1), 0, 4, axis: 2)
      want = Fast.scaled_dot_product_attention(on_emlx(q), prefix.(k), prefix.(v), 0.35)
      assert Nx.to_binary(got) == Nx.to_binary(want)

      assert_raise ArgumentError, ~r/offset 6 plus 1 queries does not fit the cache of 6/, fn ->
        Fast.scaled_dot_product_attention_cached(on_emlx(q), on_emlx(k), on_emlx(v), 0.35, 6)
        |> Nx.to_binary()
      end

      assert_raise ArgumentError, ~r/offset must be a non-negative integer/, fn ->
        Fast.scaled_dot_product_attention_cached(q, k, v, 0.35, -1)
      end
    end

    test "with a mask (integer: attend where nonzero; float: added)" do
      for type <- @types do
        {b, nq, tq, tk} = {2, 4, 3, 5}

        [q, k, v] = [
          rand({b, nq, tq, 8}, 1, type),
          rand({b, 2, tk, 8}, 2, type),
          rand({b, 2, tk, 8}, 3, type)
        ]

        sdpa = &Fast.scaled_dot_product_attention(&1, &2, &3, 0.35, &4)

        for mask <- [
              Nx.tensor([1, 1, 0, 1, 1], type: :u8),
              Nx.tensor([[[[1, 0, 1, 1, 1]]], [[[0, 1, 1, 0, 1]]]], type: :s32),
              rand({b, 1, tq, tk}, 4, type),
              rand({tq, tk}, 5, type)
            ] do
          check(sdpa, [q, k, v, mask], :fast_sdpa_masked)
        end

        key_mask = Nx.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], type: :u8)

        check(
          &Fast.scaled_dot_product_attention_causal_key_masked(&1, &2, &3, 0.35, &4),
          [q, k, v, key_mask],
          :fast_sdpa_causal_key_masked
        )
      end
    end

    test "the causal mask is aligned bottom-right" do
      q = rand({1, 1, 2, 4}, 1)
      [k, v] = [rand({1, 1, 4, 4}, 2), rand({1, 1, 4, 4}, 3)]
      mask = Nx.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], type: :u8)
      want = Fast.scaled_dot_product_attention(q, k, v, 0.5, mask)

      got =
        Fast.scaled_dot_product_attention_causal(on_emlx(q), on_emlx(k), on_emlx(v), 0.5)

      assert_tensor(got, want)
    end

    test "gradients" do
      [q, k, v] = [rand({1, 4, 3, 8}, 1), rand({1, 2, 5, 8}, 2), rand({1, 2, 5, 8}, 3)]
      check_grad(&Fast.scaled_dot_product_attention(&1, &2, &3, 0.35), [q, k, v], [0, 1, 2])

      check_grad(&Fast.scaled_dot_product_attention_causal(&1, &2, &3, 0.35), [q, k, v], [0, 1, 2])

      check_grad(
        &Fast.scaled_dot_product_attention(&1, &2, &3, 0.35, &4),
        [q, k, v, rand({3, 5}, 4)],
        [0, 1, 2, 3]
      )

      key_mask = Nx.tensor([[0, 1, 1, 1, 1]])

      check_grad(
        &Fast.scaled_dot_product_attention_causal_key_masked(&1, &2, &3, 0.35, &4),
        [q, k, v, key_mask],
        [0, 1, 2]
      )
    end
  end

  describe "swiglu/2" do
    test "matches the reference" do
      for type <- @types, {shape, seed} <- [{{4}, 1}, {{3, 7}, 2}, {{2, 3, 16}, 3}] do
        check(
          &Fast.swiglu/2,
          [rand(shape, seed, type), rand(shape, seed + 1, type)],
          :fast_swiglu
        )
      end
    end

    test "gradient" do
      check_grad(&Fast.swiglu/2, [rand({3, 7}, 1), rand({3, 7}, 2)], [0, 1])
    end
  end

  describe "linear/2" do
    test "matches the reference" do
      for type <- @types,
          {xs, ws, seed} <- [{{8}, {3, 8}, 1}, {{4, 8}, {5, 8}, 2}, {{2, 3, 16}, {7, 16}, 3}] do
        check(&Fast.linear/2, [rand(xs, seed, type), rand(ws, seed + 1, type)], :fast_linear)
      end
    end

    test "gradient" do
      check_grad(&Fast.linear/2, [rand({3, 8}, 1), rand({5, 8}, 2)], [0, 1])
    end

    test "bad shapes raise" do
      assert_raise ArgumentError, ~r/weight \{out, in\}/, fn ->
        Fast.linear(on_emlx(rand({2, 8}, 1)), on_emlx(rand({5, 7}, 2)))
      end
    end
  end

  describe "logsumexp/2" do
    test "matches the reference, over the last axis and over others" do
      cases = [
        {{16}, []},
        {{3, 32}, [axes: [-1]]},
        {{2, 3, 64}, [axes: [2], keep_axes: true]},
        {{1, 40}, [keep_axes: true]},
        {{4, 5, 6}, [axes: [0, 1]]}
      ]

      for type <- @types, {{shape, opts}, seed} <- Enum.with_index(cases) do
        check(&Fast.logsumexp(&1, opts), [rand(shape, seed, type)], :logsumexp)
      end
    end
  end

  describe "kv_cache_attention/7 and kv_cache_attention_masked/8" do
    defp kv_inputs(type) do
      {b, t, nq, nkv, d, tmax} = {2, 3, 4, 2, 8, 6}

      [{b, t, nq, d}, {b, t, nkv, d}, {b, t, nkv, d}, {b, tmax, nkv, d}, {b, tmax, nkv, d}]
      |> Enum.with_index(fn shape, i -> rand(shape, i, type) end)
    end

    # the three results, each checked like a single-result function
    defp check_kv(f, tensors, op) do
      for i <- 0..2 do
        pick =
          case length(tensors) do
            6 -> &elem(f.(&1, &2, &3, &4, &5, &6), i)
            7 -> &elem(f.(&1, &2, &3, &4, &5, &6, &7), i)
          end

        check(pick, tensors, op)
      end
    end

    test "match the reference" do
      key_mask = Nx.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], type: :u8)

      for type <- @types, offset <- [0, 2, 3] do
        tensors = kv_inputs(type)
        off = Nx.tensor(offset)

        check_kv(
          &Fast.kv_cache_attention(&1, &2, &3, &4, &5, &6, 0.35),
          tensors ++ [off],
          :fast_kv_cache_attention
        )

        masked = &Fast.kv_cache_attention_masked(&1, &2, &3, &4, &5, &6, 0.35, &7)
        check_kv(masked, tensors ++ [off, key_mask], :fast_kv_cache_attention_masked)
      end
    end

    test "prefill then decode equals causal attention over the whole sequence" do
      [q, k, v] =
        for {shape, i} <- Enum.with_index(List.duplicate({1, 4, 2, 8}, 3)), do: rand(shape, i)

      zeros = Nx.broadcast(0.0, {1, 5, 2, 8})
      [q, k, v, zeros] = Enum.map([q, k, v, zeros], &on_emlx/1)
      step = Nx.Defn.jit(&Fast.kv_cache_attention(&1, &2, &3, &4, &5, &6, 0.35), compiler: EMLX)
      slice = &Nx.slice_along_axis(&1, &2, &3, axis: 1)

      {a1, kc, vc} =
        step.(slice.(q, 0, 3), slice.(k, 0, 3), slice.(v, 0, 3), zeros, zeros, Nx.tensor(0))

      {a2, kc, _vc} =
        step.(slice.(q, 3, 1), slice.(k, 3, 1), slice.(v, 3, 1), kc, vc, Nx.tensor(3))

      bntd = &Nx.transpose(&1, axes: [0, 2, 1, 3])

      want =
        Fast.scaled_dot_product_attention_causal(bntd.(q), bntd.(k), bntd.(v), 0.35) |> bntd.()

      assert_tensor(Nx.concatenate([a1, a2], axis: 1), to_bin(want))
      assert_tensor(slice.(kc, 0, 4), to_bin(k))
      assert_tensor(slice.(kc, 4, 1), Nx.broadcast(0.0, {1, 1, 2, 8}))
    end

    test "gradient" do
      tensors = kv_inputs(:f32) ++ [Nx.tensor(1)]
      f = &elem(Fast.kv_cache_attention(&1, &2, &3, &4, &5, &6, 0.35), 0)
      check_grad(f, tensors, [0, 1, 2, 3, 4])
    end

    test "bad input raises ArgumentError" do
      [q, nk, nv, kc, vc] = kv_inputs(:f32)

      assert_raise ArgumentError, ~r/do not agree/, fn ->
        Fast.kv_cache_attention(q, kc, kc, kc, vc, 0, 0.3)
      end

      assert_raise ArgumentError, ~r/of one type/, fn ->
        Fast.kv_cache_attention(q, nk, nv, Nx.as_type(kc, :f16), vc, 0, 0.3)
      end

      assert_raise ArgumentError, ~r/offset must be a non-negative integer/, fn ->
        Fast.kv_cache_attention(q, nk, nv, kc, vc, -1, 0.3)
      end

      assert_raise ArgumentError, ~r/key_mask must be a real tensor of shape \{2, 6\}/, fn ->
        Fast.kv_cache_attention_masked(q, nk, nv, kc, vc, 0, 0.3, Nx.iota({2, 3}))
      end
    end
  end

  defn block_layer(x, w, pos) do
    h = Fast.rms_norm(x, w, 1.0e-6)
    r = Fast.rope_with_positions(h, pos, 8, false, 10_000.0, 1.0)
    Fast.swiglu(r, h) * 2
  end

  test "inside defn, on the default compiler and on EMLX" do
    x = rand({2, 3, 2, 8}, 1)
    w = rand({8}, 2)
    pos = Nx.tensor([[0, 1, 2], [3, 4, 5]])
    want = block_layer(x, w, pos)
    [ex, ew, ep] = Enum.map([x, w, pos], &on_emlx/1)
    assert_tensor(block_layer(ex, ew, ep), want)
    assert_tensor(Nx.Defn.jit(&block_layer/3, compiler: EMLX).(ex, ew, ep), want)

    ops = recorded_ops(fn -> Nx.Defn.jit(&block_layer/3, compiler: EMLX).(ex, ew, ep) end)
    assert ops == [:full, :fast_rms_norm, :fast_rope_positions, :fast_swiglu, :multiply]
  end

  test "vectorized inputs take the reference" do
    x = Nx.vectorize(rand({3, 2, 8}, 1), :batch)
    w = rand({8}, 2)
    got = Fast.rms_norm(on_emlx(x), on_emlx(w), 1.0e-6)
    assert got.vectorized_axes == [batch: 3]
    want = Fast.rms_norm(x, w, 1.0e-6)
    assert_tensor(Nx.devectorize(got), Nx.devectorize(want))

    [q, nk, nv, kc, vc] = kv_inputs(:f32)
    q = q |> Nx.stack() |> Nx.tile([2, 1, 1, 1, 1]) |> Nx.vectorize(:batch)
    {attn, kc2, _} = Fast.kv_cache_attention(on_emlx(q), nk, nv, kc, vc, 1, 0.35)
    assert attn.vectorized_axes == [batch: 2]
    {want, want_k, _} = Fast.kv_cache_attention(Nx.devectorize(q)[0], nk, nv, kc, vc, 1, 0.35)
    assert_tensor(Nx.devectorize(attn)[1], want)
    assert_tensor(kc2, want_k)
  end

  describe "bad input raises ArgumentError" do
    test "in Elixir" do
      x = on_emlx(rand({2, 8}, 1))
      w = on_emlx(rand({8}, 2))
      q = on_emlx(rand({1, 4, 3, 8}, 3))
      k = on_emlx(rand({1, 3, 5, 8}, 4))

      assert_raise ArgumentError, ~r/weight must have shape \{hidden\}/, fn ->
        Fast.rms_norm(x, on_emlx(rand({4}, 1)), 1.0e-6)
      end

      assert_raise ArgumentError, ~r/x must be a float tensor/, fn ->
        Fast.rms_norm(Nx.iota({2, 8}, backend: backend()), w, 1.0e-6)
      end

      assert_raise ArgumentError, ~r/eps must be a number/, fn -> Fast.rms_norm(x, w, :eps) end

      assert_raise ArgumentError, ~r/bias must have shape/, fn ->
        Fast.layer_norm(x, w, x, 1.0e-5)
      end

      assert_raise ArgumentError, ~r/dims must be a positive even/, fn ->
        Fast.rope(x, 3, false, 1.0e4, 1.0, 0)
      end

      assert_raise ArgumentError, ~r/dims must be a positive even/, fn ->
        Fast.rope(x, 10, false, 1.0e4, 1.0, 0)
      end

      assert_raise ArgumentError, ~r/traditional must be a boolean/, fn ->
        Fast.rope(x, 8, 1, 1.0e4, 1.0, 0)
      end

      assert_raise ArgumentError, ~r/offset must be a 32-bit/, fn ->
        Fast.rope(x, 8, false, 1.0e4, 1.0, 2.5)
      end

      assert_raise ArgumentError, ~r/base must be positive/, fn ->
        Fast.rope(x, 8, false, 0, 1.0, 0)
      end

      a = on_emlx(rand({2, 3, 8}, 5))

      assert_raise ArgumentError,
                   ~r/position_ids must be an integer tensor of shape \{2, 3\}/,
                   fn ->
                     Fast.rope_with_positions(
                       a,
                       Nx.tensor([[0, 1], [0, 1]]),
                       8,
                       false,
                       1.0e4,
                       1.0
                     )
                   end

      assert_raise ArgumentError, ~r/position_ids must be an integer/, fn ->
        Fast.rope_with_positions(
          a,
          Nx.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]),
          8,
          false,
          1.0e4,
          1.0
        )
      end

      assert_raise ArgumentError, ~r/freqs must have shape \{4\}/, fn ->
        Fast.rope_with_freqs(
          a,
          Nx.tensor([[0, 1, 2], [0, 1, 2]]),
          8,
          false,
          1.0,
          Nx.iota({3}, type: :f32)
        )
      end

      assert_raise ArgumentError, ~r/N_q must be a multiple of N_kv/, fn ->
        Fast.scaled_dot_product_attention(q, k, k, 0.3)
      end

      assert_raise ArgumentError, ~r/q must be \{B, N_q, T_q, D\}/, fn ->
        Fast.scaled_dot_product_attention_causal(x, x, x, 0.3)
      end

      k2 = on_emlx(rand({1, 2, 5, 8}, 4))

      assert_raise ArgumentError, ~r/does not broadcast/, fn ->
        Fast.scaled_dot_product_attention(q, k2, k2, 0.3, Nx.iota({3, 4}))
      end

      assert_raise ArgumentError, ~r/mask must be an integer or float/, fn ->
        Fast.scaled_dot_product_attention(q, k2, k2, 0.3, Nx.tensor(Complex.new(1, 1)))
      end

      assert_raise ArgumentError, ~r/key_mask must be a real tensor of shape \{1, 5\}/, fn ->
        Fast.scaled_dot_product_attention_causal_key_masked(q, k2, k2, 0.3, Nx.iota({1, 4}))
      end

      assert_raise ArgumentError, ~r/gate and up must have the same shape/, fn ->
        Fast.swiglu(x, w)
      end
    end

    test "in the shim (the op table's entries check their arguments)" do
      ref = fn t -> EMLX.Backend.from_nx(on_emlx(t)) end
      x = ref.(rand({2, 8}, 1))
      q = ref.(rand({1, 4, 3, 8}, 3))
      k = ref.(rand({1, 3, 5, 8}, 4))
      ints = ref.(Nx.iota({2, 8}))

      for {op, args, message} <- [
            {:fast_rms_norm, [x, ref.(rand({4}, 2)), 1.0e-6], ~r/weight must have shape \{8\}/},
            {:fast_rms_norm, [ints, ref.(rand({8}, 2)), 1.0e-6], ~r/x must be f32, f16 or bf16/},
            {:fast_layer_norm, [x, x, x, 1.0e-6], ~r/weight must have shape/},
            {:fast_rope, [x, 3, false, 1.0e4, 1.0, 0], ~r/dims must be even/},
            {:fast_rope, [x, 8, false, 1.0e4, 1.0, 1_099_511_627_776], ~r/offset must fit/},
            {:fast_rope_positions, [x, ints, 8, false, 1.0e4, 1.0], ~r/\{B, T, \.\.\., D\}/},
            {:fast_sdpa, [q, k, k, 0.3], ~r/multiple of k's heads/},
            {:fast_sdpa_masked, [q, q, q, ints, 0.3], ~r/does not broadcast/},
            {:fast_sdpa_causal_key_masked, [q, q, q, 0.3, ints], ~r/key_mask must have shape/},
            {:fast_swiglu, [x, q], ~r/same shape/}
          ] do
        # ops run on the worker: the failure surfaces when the result is read
        assert_raise ArgumentError, message, fn ->
          op |> EMLX.op(args) |> EMLX.Backend.to_nx() |> Nx.to_binary()
        end
      end
    end
  end
end
