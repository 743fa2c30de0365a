defmodule EMLX.QuantizationTest do
  @moduledoc """
  EMLX.Quantization: the round trip within MLX's affine error bound, the
  quantized matmul against a dense dot of the dequantized weight, `Nx.dot`
  dispatch (eager and under `compiler: EMLX`), and bad input.
  """
  use EMLX.Case, async: true

  import Nx.Defn

  alias EMLX.Defn.Recorder
  alias EMLX.Quantization, as: Q

  defn dequantized_layer(x, qw), do: Nx.dot(x, [2], Q.dequantize(qw), [1])
  defn quantized_layer(x, qw), do: Q.quantized_matmul(x, qw) |> Nx.add(1)

  defp rand(shape, seed, type \\ :f32) do
    {t, _} = Nx.Random.normal(Nx.Random.key(seed), shape: shape, type: :f32)
    t |> Nx.as_type(type) |> Nx.backend_copy({EMLX.Backend, device: device()})
  end

  defp max_abs_diff(a, b),
    do: Nx.subtract(to_bin(a), to_bin(b)) |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()

  defp recorded_ops(fun) do
    queue = EMLX.CommandQueue.resolve(device())
    {_, rec} = Recorder.with_recorder(queue, device(), fun)
    rec.instrs |> Enum.reverse() |> Enum.map(&elem(&1, 0))
  end

  describe "quantize/2 and dequantize/1" do
    for bits <- [2, 4, 8], group_size <- [32, 64, 128] do
      test "round trip within half a step, #{bits} bits, groups of #{group_size}" do
        bits = unquote(bits)
        group_size = unquote(group_size)
        {rows, cols} = {8, 256}
        w = rand({rows, cols}, bits * 1000 + group_size)
        qw = Q.quantize(w, bits: bits, group_size: group_size)
        dq = Q.dequantize(qw)

        assert dq.shape == {rows, cols}
        assert dq.type == {:f, 32}

        # Per group MLX's affine mode takes the step (max - min) / (2^bits - 1)
        # and then rounds it so that zero is exactly a level: the scale it
        # keeps is within a factor of the step, values it covers round to
        # the nearest level (half a scale off at most), and the far end of
        # the group may fall outside the levels by what rounding the scale
        # took off (max - min - |scale| * (2^bits - 1)).
        levels = 2 ** bits - 1
        groups = {rows, div(cols, group_size), group_size}
        wg = w |> to_bin() |> Nx.reshape(groups)
        range = Nx.subtract(Nx.reduce_max(wg, axes: [2]), Nx.reduce_min(wg, axes: [2]))
        step = Nx.divide(range, levels)
        scale = to_bin(qw.data.quantization_config.scales) |> Nx.abs()
        assert scale.shape == {rows, div(cols, group_size)}
        ratio = Nx.divide(scale, step)

        assert Nx.all(Nx.logical_and(Nx.greater(ratio, 0.5), Nx.less(ratio, 1.5)))
               |> Nx.to_number() == 1

        clipped = Nx.max(Nx.subtract(range, Nx.multiply(scale, levels)), 0)
        bound = scale |> Nx.divide(2) |> Nx.add(clipped) |> Nx.add(1.0e-5)
        diff = Nx.subtract(wg, Nx.reshape(to_bin(dq), groups)) |> Nx.abs()
        assert Nx.all(Nx.less_equal(Nx.reduce_max(diff, axes: [2]), bound)) |> Nx.to_number() == 1

        # On average the error is a rounding error: below half a step.
        assert Nx.all(Nx.less_equal(Nx.mean(diff, axes: [2]), Nx.divide(step, 2)))
               |> Nx.to_number() ==
                 1
      end
    end

    test "3, 5 and 6 bits round trip as well" do
      w = rand({4, 128}, 7)

      for bits <- [3, 5, 6] do
        dq = w |> Q.quantize(bits: bits, group_size: 64) |> Q.dequantize()
        range = Nx.subtract(Nx.reduce_max(w), Nx.reduce_min(w)) |> Nx.to_number()
        assert max_abs_diff(dq, w) <= range / (2 ** bits - 1)
      end
    end

    test "the quantized tensor: logical shape, storage type and config" do
      w = rand({16, 128}, 1)
      qw = Q.quantize(w)

      assert Q.quantized?(qw)
      refute Q.quantized?(w)
      refute Q.quantized?(:not_a_tensor)
      assert qw.shape == {16, 128}
      assert qw.type == {:s, 4}

      assert %Q.Config{group_size: 64, bits: 4, scales: scales, biases: biases} =
               qw.data.quantization_config

      assert scales.shape == {16, 2} and biases.shape == {16, 2}
      assert Q.quantize(w, type: {:s, 8}).data.quantization_config.bits == 8
      assert Q.quantize(w, bits: 2).type == {:s, 2}
      assert Q.quantize(w, bits: 6).type == {:s, 8}
      assert Q.from_dense(w, bits: 8).type == {:s, 8}
    end

    test "inspect, copies and read-back of a quantized tensor" do
      qw = Q.quantize(rand({4, 64}, 8), bits: 8, group_size: 32)
      assert inspect(qw) =~ "EMLX.Quantization: 8 bits, group_size 32, f32 scales"

      copy = Nx.backend_copy(qw, {EMLX.Backend, device: device()})
      assert Q.quantized?(copy)
      assert max_abs_diff(Q.dequantize(copy), Q.dequantize(qw)) == 0.0
      assert Nx.backend_transfer(qw, {EMLX.Backend, device: device()}) == qw

      assert_raise ArgumentError, ~r/dequantize\/1 first/, fn -> Nx.to_binary(qw) end

      assert_raise ArgumentError, ~r/dequantize\/1 first/, fn ->
        Nx.backend_copy(qw, Nx.BinaryBackend)
      end
    end

    test "half precision weights keep their type" do
      w = rand({4, 64}, 3, :bf16)
      dq = w |> Q.quantize(bits: 8, group_size: 32) |> Q.dequantize()
      assert dq.type == {:bf, 16}
      assert max_abs_diff(dq, w) < 0.1
    end

    test "quantized_tensor/5 rebuilds a quantized tensor from the packed parts" do
      w = rand({8, 64}, 4)
      qw = Q.quantize(w, bits: 4, group_size: 32)
      %Q.Config{scales: s, biases: b} = qw.data.quantization_config
      packed = EMLX.Backend.from_nx(%{qw | data: %{qw.data | quantization_config: nil}})
      qw2 = Q.quantized_tensor(packed, s, b, {8, 64}, type: {:s, 4}, group_size: 32)

      assert Q.quantized?(qw2)
      assert max_abs_diff(Q.dequantize(qw2), Q.dequantize(qw)) == 0.0

      assert_raise ArgumentError, ~r/do not match/, fn ->
        Q.quantized_tensor(packed, s, b, {8, 128}, group_size: 32)
      end
    end
  end

  describe "quantized_matmul/2 and Nx.dot" do
    setup do
      w = rand({48, 256}, 11)
      qw = Q.quantize(w, bits: 4, group_size: 64)
      %{qw: qw, dq: Q.dequantize(qw), x: rand({2, 3, 256}, 12)}
    end

    test "quantized_matmul is x . transpose(dequantize(qw))", %{qw: qw, dq: dq, x: x} do
      got = Q.quantized_matmul(x, qw)
      assert got.shape == {2, 3, 48}
      assert got.type == {:f, 32}
      assert_tensor(got, to_bin(Nx.dot(x, [2], dq, [1])), tol: 1.0e-3)
    end

    test "Nx.dot contracting the weight's last axis runs the quantized matmul", ctx do
      %{qw: qw, dq: dq, x: x} = ctx
      assert_tensor(Nx.dot(x, [2], qw, [1]), to_bin(Nx.dot(x, [2], dq, [1])), tol: 1.0e-3)
      assert recorded_ops(fn -> Nx.dot(x, [2], qw, [1]) end) == [:quantized_matmul]
    end

    test "Nx.dot/2 with a quantized {in, out} weight is MLX's untransposed matmul", %{qw: qw} do
      y = rand({5, 48}, 13)
      dq = Q.dequantize(qw)
      assert_tensor(Nx.dot(y, qw), to_bin(Nx.dot(y, dq)), tol: 1.0e-3)
      assert recorded_ops(fn -> Nx.dot(y, qw) end) == [:quantized_matmul]
    end

    test "other dots with a quantized operand dequantize it first", %{qw: qw, dq: dq} do
      z = rand({256, 7}, 14)
      assert_tensor(Nx.dot(qw, z), to_bin(Nx.dot(dq, z)), tol: 1.0e-3)
      ops = recorded_ops(fn -> Nx.dot(qw, z) end)
      assert :dequantize in ops and :quantized_matmul not in ops
    end

    test "under compiler: EMLX, a new weight each call", %{qw: qw, dq: dq, x: x} do
      f = Nx.Defn.jit(fn x, w -> x |> Nx.dot([2], w, [1]) |> Nx.add(1) end, compiler: EMLX)
      assert_tensor(f.(x, qw), to_bin(Nx.add(Nx.dot(x, [2], dq, [1]), 1)), tol: 1.0e-3)

      qw2 = Q.quantize(Nx.multiply(Q.dequantize(qw), 2), bits: 4, group_size: 64)
      want2 = Nx.dot(x, [2], Q.dequantize(qw2), [1]) |> Nx.add(1)
      assert_tensor(f.(x, qw2), to_bin(want2), tol: 1.0e-3)
    end

    test "under compiler: EMLX, a plan cached for a plain s8 weight is not used for a quantized one" do
      w = rand({16, 64}, 21)
      q8 = Q.quantize(w, bits: 8, group_size: 32)
      assert q8.type == {:s, 8}
      plain = Nx.iota({16, 64}, type: :s8, backend: {EMLX.Backend, device: device()})
      x = rand({3, 64}, 22)
      f = Nx.Defn.jit(fn x, w -> Nx.dot(x, [1], w, [1]) end, compiler: EMLX)

      assert_tensor(f.(x, plain), to_bin(Nx.dot(x, [1], Nx.as_type(plain, :f32), [1])),
        tol: 1.0e-3
      )

      assert_tensor(f.(x, q8), to_bin(Nx.dot(x, [1], Q.dequantize(q8), [1])), tol: 1.0e-3)

      assert_tensor(f.(x, plain), to_bin(Nx.dot(x, [1], Nx.as_type(plain, :f32), [1])),
        tol: 1.0e-3
      )
    end
  end

  test "EMLX's device-ref functions agree with EMLX.Quantization" do
    w = rand({8, 64}, 31)
    x = rand({3, 64}, 32)
    qw = EMLX.quantize(w, group_size: 32, bits: 8)
    [q, s, b] = EMLX.quantize(EMLX.Backend.from_nx(w), 32, 8)
    dq = EMLX.dequantize(q, s, b, 32, 8) |> EMLX.Backend.to_nx()
    assert max_abs_diff(dq, EMLX.dequantize(qw)) == 0.0

    mm =
      EMLX.quantized_matmul(EMLX.Backend.from_nx(x), q, s, b, true, 32, 8) |> EMLX.Backend.to_nx()

    assert_tensor(mm, to_bin(EMLX.quantized_matmul(x, qw)))

    xt = rand({3, 8}, 33)

    mm_t =
      EMLX.quantized_matmul(EMLX.Backend.from_nx(xt), q, s, b, false, 32, 8)
      |> EMLX.Backend.to_nx()

    assert_tensor(mm_t, to_bin(Nx.dot(xt, dq)), tol: 1.0e-4)
  end

  describe "inside defn" do
    setup do
      w = rand({24, 128}, 41)
      qw = Q.quantize(w, bits: 8, group_size: 32)
      %{qw: qw, dq: Q.dequantize(qw), x: rand({2, 3, 128}, 42)}
    end

    for compiler <- [EMLX, Nx.Defn.Evaluator] do
      test "dequantize/2 and quantized_matmul/2 with #{inspect(compiler)}", ctx do
        %{qw: qw, dq: dq, x: x} = ctx
        opts = [compiler: unquote(compiler)]
        want = to_bin(Nx.dot(x, [2], dq, [1]))

        got = Nx.Defn.jit(&dequantized_layer/2, opts).(x, qw)
        assert_tensor(got, want, tol: 1.0e-3)

        got = Nx.Defn.jit(&quantized_layer/2, opts).(x, qw)
        assert_tensor(got, Nx.add(want, 1), tol: 1.0e-3)

        bf16 = Nx.Defn.jit(fn qw -> Q.dequantize(qw, type: :bf16) end, opts).(qw)
        assert bf16.type == {:bf, 16}
        assert max_abs_diff(bf16, dq) < 0.05
      end
    end

    test "a weight that is not quantized raises when the function runs", %{x: x} do
      f = Nx.Defn.jit(&quantized_layer/2, compiler: EMLX)

      assert_raise ArgumentError, ~r/expected a quantized tensor/, fn ->
        f.(x, rand({24, 128}, 43))
      end
    end

    test "quantize/2 runs outside defn only", %{x: x} do
      assert_raise ArgumentError, ~r/runs outside defn/, fn ->
        Nx.Defn.jit(&Q.quantize(&1, bits: 4), compiler: EMLX).(x)
      end
    end

    test "shapes are checked when tracing", %{qw: qw} do
      assert_raise ArgumentError, ~r/expected a 2-D weight/, fn ->
        Nx.Defn.jit(&quantized_layer/2, compiler: EMLX).(rand({2, 64}, 44), qw)
      end
    end
  end

  describe "bad input raises ArgumentError" do
    setup do
      %{w: rand({4, 128}, 21)}
    end

    test "bits and types", %{w: w} do
      for bits <- [1, 7, 16, :four] do
        assert_raise ArgumentError, ~r/bits must be one of/, fn -> Q.quantize(w, bits: bits) end
      end

      assert_raise ArgumentError, ~r/:type must be/, fn -> Q.quantize(w, type: {:u, 4}) end
      assert_raise ArgumentError, ~r/not both/, fn -> Q.quantize(w, bits: 4, type: {:s, 4}) end
    end

    test "group sizes", %{w: w} do
      for gs <- [16, 48, 256] do
        assert_raise ArgumentError, ~r/group_size must be one of/, fn ->
          Q.quantize(w, group_size: gs)
        end
      end
    end

    test "shapes and element types" do
      assert_raise ArgumentError, ~r/must be divisible by group_size 64/, fn ->
        Q.quantize(rand({4, 96}, 1))
      end

      assert_raise ArgumentError, ~r/at least two axes/, fn -> Q.quantize(rand({128}, 1)) end

      assert_raise ArgumentError, ~r/must be f32, f16 or bf16/, fn ->
        Q.quantize(Nx.iota({4, 64}, backend: {EMLX.Backend, device: device()}))
      end
    end

    test "quantized_matmul and dequantize arguments", %{w: w} do
      qw = Q.quantize(w)

      assert_raise ArgumentError, ~r/expected a quantized tensor/, fn -> Q.dequantize(w) end

      assert_raise ArgumentError, ~r/expected a quantized tensor/, fn ->
        Q.quantized_matmul(w, w)
      end

      assert_raise ArgumentError, ~r/must not be quantized/, fn -> Q.quantized_matmul(qw, qw) end

      assert_raise ArgumentError, ~r/expected a 2-D weight/, fn ->
        Q.quantized_matmul(rand({2, 64}, 2), qw)
      end

      assert_raise ArgumentError, ~r/must be f32, f16 or bf16/, fn ->
        Q.quantized_matmul(Nx.iota({2, 128}, backend: {EMLX.Backend, device: device()}), qw)
      end
    end

    test "the device-ref functions of EMLX check bits and group sizes" do
      w = EMLX.Backend.from_nx(rand({4, 64}, 5))
      assert_raise ArgumentError, ~r/bits must be one of/, fn -> EMLX.quantize(w, 32, 7) end
      assert_raise ArgumentError, ~r/group_size must be one of/, fn -> EMLX.quantize(w, 16, 4) end
      [q, s, b] = EMLX.quantize(w, 32, 4)

      assert_raise ArgumentError, ~r/bits must be one of/, fn ->
        EMLX.dequantize(q, s, b, 32, 1)
      end

      assert_raise ArgumentError, ~r/group_size must be one of/, fn ->
        EMLX.quantized_matmul(w, q, s, b, true, 100, 4)
      end
    end

    test "the shim checks the ops too" do
      {dev, _} = w = EMLX.Backend.from_nx(rand({4, 64}, 3))

      for {gs, bits, msg} <- [{48, 4, ~r/group_size must be/}, {32, 7, ~r/bits must be/}] do
        assert_raise ArgumentError, msg, fn ->
          EMLX.op(:quantize, [w, gs, bits]) |> hd() |> EMLX.Backend.to_nx() |> Nx.to_binary()
        end
      end

      [q, s, b] = EMLX.op(:quantize, [w, 32, 4])
      assert dev == elem(q, 0)

      assert_raise ArgumentError, ~r/do not match scales/, fn ->
        EMLX.op(:dequantize, [q, s, b, 64, 4]) |> EMLX.Backend.to_nx() |> Nx.to_binary()
      end

      assert_raise ArgumentError, ~r/must be 64 for the weight/, fn ->
        x = EMLX.Backend.from_nx(rand({2, 32}, 4))

        EMLX.op(:quantized_matmul, [x, q, s, b, true, 32, 4])
        |> EMLX.Backend.to_nx()
        |> Nx.to_binary()
      end
    end
  end
end
