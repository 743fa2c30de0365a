defmodule EMLX.GemmTest do
  @moduledoc """
  The CPU GEMM paths of `c_src/shim/kernels_linalg.cpp` and
  `kernels_conv.cpp`: half-precision dots and convolutions as float32 BLAS
  work rounded once, and exact integer dots through float64 GEMMs of 8- or
  16-bit limbs (with the multiply-and-sum path past the bound on K).
  """
  use EMLX.Case, async: true

  defp synth(shape, type, phase) do
    n = Tuple.product(shape)

    Nx.iota({n}, type: :f32, backend: Nx.BinaryBackend)
    |> Nx.multiply(0.37)
    |> Nx.add(phase)
    |> Nx.sin()
    |> Nx.reshape(shape)
    |> Nx.as_type(type)
  end

  defp jit(fun), do: Nx.Defn.jit(fun, compiler: EMLX, device: device())

  # Integers spread over the type's whole range (so products wrap).
  defp full_range(shape, {kind, bits} = type, seed) do
    {lo, hi} =
      if kind == :s,
        do: {-Integer.pow(2, bits - 1), Integer.pow(2, bits - 1) - 1},
        else: {0, Integer.pow(2, bits) - 1}

    :rand.seed(:exsss, {seed, 17, 29})

    for(_ <- 1..Tuple.product(shape), do: lo + :rand.uniform(hi - lo + 1) - 1)
    |> Nx.tensor(type: type, backend: Nx.BinaryBackend)
    |> Nx.reshape(shape)
  end

  describe "half-precision dot" do
    for type <- [:bf16, :f16] do
      test "#{type}: matches BinaryBackend, eager, compiled and batched" do
        type = unquote(type)
        a = synth({37, 64}, type, 0.0)
        b = synth({64, 29}, type, 1.0)
        assert_same(&Nx.dot/2, [a, b])
        assert_same(fn a, b -> jit(&Nx.dot/2).(a, b) end, [a, b])

        ba = synth({3, 17, 40}, type, 2.0)
        bb = synth({3, 40, 11}, type, 3.0)
        batched = &Nx.dot(&1, [2], [0], &2, [1], [0])
        assert_same(batched, [ba, bb])
        assert_same(fn a, b -> jit(batched).(a, b) end, [ba, bb])
      end
    end

    test "on the CPU it is the f32 product of the widened inputs, rounded once" do
      if device() == :cpu do
        for type <- [:bf16, :f16] do
          a = synth({50, 300}, type, 0.5) |> Nx.backend_copy(EMLX.Backend)
          b = synth({300, 40}, type, 1.5) |> Nx.backend_copy(EMLX.Backend)
          want = Nx.dot(Nx.as_type(a, :f32), Nx.as_type(b, :f32)) |> Nx.as_type(type)
          assert Nx.to_binary(Nx.dot(a, b)) == Nx.to_binary(want)
          assert Nx.to_binary(jit(&Nx.dot/2).(a, b)) == Nx.to_binary(want)
        end
      end
    end
  end

  describe "half-precision conv" do
    for type <- [:bf16, :f16] do
      test "#{type}: matches BinaryBackend, eager and compiled" do
        type = unquote(type)
        x = synth({2, 3, 9, 8}, type, 0.0)
        k = synth({4, 3, 3, 3}, type, 1.0)
        conv = &Nx.conv(&1, &2, padding: :same)
        assert_same(conv, [x, k])
        assert_same(fn x, k -> jit(conv).(x, k) end, [x, k])
        grouped = &Nx.conv(&1, &2, strides: [2, 1], feature_group_size: 3)
        assert_same(grouped, [synth({1, 6, 7, 7}, type, 2.0), synth({3, 2, 2, 3}, type, 3.0)])
      end
    end
  end

  describe "integer dot" do
    for type <- [{:s, 8}, {:u, 8}, {:s, 16}, {:u, 16}, {:s, 32}, {:u, 32}, {:s, 64}, {:u, 64}] do
      test "#{inspect(type)}: exact with wrap-around over the whole range" do
        type = unquote(type)
        a = full_range({2, 5, 13}, type, 1)
        b = full_range({2, 13, 6}, type, 2)
        batched = &Nx.dot(&1, [2], [0], &2, [1], [0])
        assert_same(batched, [a, b])
        assert_same(fn a, b -> jit(batched).(a, b) end, [a, b])
        assert_same(&Nx.dot/2, [a[0], b[1]])
      end
    end

    test "mixed integer types compute in the promoted type" do
      assert_same(&Nx.dot/2, [full_range({4, 7}, {:s, 8}, 3), full_range({7, 3}, {:s, 32}, 4)])
      assert_same(&Nx.dot/2, [full_range({4, 7}, {:u, 16}, 5), full_range({7, 3}, {:s, 64}, 6)])
    end

    test "long contractions, on both sides of the float64 bound" do
      # s64 limbs are 16 bits: 4 * K * 2^32 < 2^53 holds up to K = 2^19 - 1.
      # a[i] = 1_000_003 * i and b[i][j] = -7_777_777 * (i + j): the sums, in
      # closed form, wrap around 2^64.
      for k <- [524_287, 524_289] do
        a = Nx.iota({1, k}, type: :s64) |> Nx.multiply(1_000_003)

        b =
          Nx.iota({k, 2}, type: :s64, axis: 0)
          |> Nx.add(Nx.iota({k, 2}, axis: 1))
          |> Nx.multiply(-7_777_777)

        sum_i = div(k * (k - 1), 2)
        sum_ii = div((k - 1) * k * (2 * k - 1), 6)

        want =
          for j <- 0..1 do
            exact = 1_000_003 * -7_777_777 * (sum_ii + j * sum_i)
            <<wrapped::signed-64>> = <<exact::signed-64>>
            wrapped
          end

        assert Nx.to_flat_list(Nx.dot(a, b)) == want
      end
    end
  end
end
