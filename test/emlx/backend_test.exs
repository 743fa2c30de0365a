defmodule EMLX.BackendTest do
  use EMLX.Case, async: true

  @types [u8: {:u, 8}, u16: {:u, 16}, u32: {:u, 32}, u64: {:u, 64}] ++
           [s8: {:s, 8}, s16: {:s, 16}, s32: {:s, 32}, s64: {:s, 64}] ++
           [f16: {:f, 16}, bf16: {:bf, 16}, f32: {:f, 32}, f64: {:f, 64}, c64: {:c, 64}]

  describe "data in and out" do
    for {name, type} <- @types do
      test "from_binary/to_binary round trip for #{name}" do
        type = unquote(type)
        data = [[1, 2, 3], [4, 5, 6]]
        want = Nx.tensor(data, type: type, backend: Nx.BinaryBackend)
        got = emlx(data, type: type)
        assert got.data.__struct__ == EMLX.Backend
        assert Nx.to_binary(got) == Nx.to_binary(want)
        assert got.shape == {2, 3} and got.type == type
      end
    end

    test "f64 keeps f64 precision" do
      x = emlx([1.0e-300, 1.0 / 3.0], type: :f64)
      assert Nx.to_list(Nx.multiply(x, 3)) == [3.0e-300, 1.0]
    end

    test "u64 and s64 extremes survive" do
      assert Nx.to_list(emlx([18_446_744_073_709_551_615], type: :u64)) == [
               18_446_744_073_709_551_615
             ]

      assert Nx.to_list(emlx([-9_223_372_036_854_775_808], type: :s64)) == [
               -9_223_372_036_854_775_808
             ]
    end

    test "to_binary with a limit" do
      assert Nx.to_binary(emlx([1, 2, 3], type: :s32), limit: 2) == <<1::32-native, 2::32-native>>
    end

    test "constants, non-finite values and complex scalars" do
      assert Nx.to_list(Nx.broadcast(Nx.tensor(7, backend: EMLX.Backend), {2})) == [7, 7]

      assert Nx.to_list(emlx([:nan, :infinity, :neg_infinity])) == [
               :nan,
               :infinity,
               :neg_infinity
             ]

      c = Nx.tensor(Complex.new(1.0, -2.0), backend: EMLX.Backend)
      assert Nx.to_number(c) == Complex.new(1.0, -2.0)
    end

    test "iota and eye" do
      assert_tensor(Nx.iota({2, 3}, axis: 1, backend: EMLX.Backend), Nx.iota({2, 3}, axis: 1))

      assert_tensor(
        Nx.iota({2, 3}, type: :f32, backend: EMLX.Backend),
        Nx.iota({2, 3}, type: :f32)
      )

      assert_tensor(Nx.eye({2, 3, 3}, backend: EMLX.Backend), Nx.eye({2, 3, 3}))
    end

    test "backend_copy, transfer and deallocate" do
      t = emlx([1, 2, 3])
      copy = Nx.backend_copy(t, EMLX.Backend)

      # backend options are validated
      assert_raise ArgumentError, ~r/unknown keys \[:devic\]/, fn ->
        Nx.backend_copy(t, {EMLX.Backend, devic: :cpu})
      end

      assert_raise ArgumentError, ~r/:device must be :cpu or :gpu/, fn ->
        Nx.backend_copy(t, {EMLX.Backend, device: :tpu})
      end

      assert Nx.backend_deallocate(copy) == :ok
      assert Nx.backend_deallocate(copy) == :already_deallocated
      assert Nx.to_list(t) == [1, 2, 3]
      bin = Nx.backend_transfer(t, Nx.BinaryBackend)
      assert Nx.to_list(bin) == [1, 2, 3]
      assert_raise ArgumentError, ~r/deallocated/, fn -> Nx.to_list(t) end
    end

    test "inspect shows the values" do
      assert inspect(emlx([1, 2, 3])) =~ "[1, 2, 3]"
    end

    test "to_batched with and without leftover repeat" do
      t = emlx([[1], [2], [3], [4], [5]])
      assert Enum.map(Nx.to_batched(t, 2), &Nx.to_flat_list/1) == [[1, 2], [3, 4], [5, 1]]

      assert Enum.map(Nx.to_batched(t, 2, leftover: :discard), &Nx.to_flat_list/1) == [
               [1, 2],
               [3, 4]
             ]
    end
  end

  describe "callbacks" do
    test "every Nx.Backend callback is implemented" do
      # function_exported?/3 needs the module loaded (this test may run first)
      Code.ensure_loaded!(EMLX.Backend)

      missing =
        for {name, arity} <- Nx.Backend.behaviour_info(:callbacks),
            not function_exported?(EMLX.Backend, name, arity),
            do: {name, arity}

      assert missing == []
    end
  end

  describe "shape ops" do
    setup do
      %{t: Nx.iota({2, 3, 4}, backend: Nx.BinaryBackend)}
    end

    test "reshape, squeeze, transpose, broadcast", %{t: t} do
      assert_same(&Nx.reshape(&1, {4, 6}), [t])
      assert_same(&Nx.squeeze(Nx.reshape(&1, {1, 24, 1})), [t])
      assert_same(&Nx.transpose(&1, axes: [2, 0, 1]), [t])
      assert_same(&Nx.broadcast(&1, {2, 2, 3, 4}), [t])
      assert_same(&Nx.broadcast(&1, {2, 3, 4}, axes: [1, 2]), [Nx.iota({3, 1})])
    end

    test "pad with negative and interior padding", %{t: t} do
      assert_same(&Nx.pad(&1, 0, [{1, -1, 1}, {-1, 2, 0}, {0, 0, 2}]), [t])
      assert_same(&Nx.pad(&1, 9.5, [{2, 1, 0}]), [Nx.tensor([1.0, 2.0])])
    end

    test "slice: static, strided, clamped and dynamic", %{t: t} do
      assert_same(&Nx.slice(&1, [0, 1, 1], [2, 2, 3], strides: [1, 1, 2]), [t])
      assert_same(&Nx.slice(&1, [1, 2, 3], [1, 1, 1]), [t])
      assert_same(&Nx.slice(&1, [Nx.tensor(5), 0, Nx.tensor(-1)], [1, 2, 2]), [t])
    end

    test "put_slice, concatenate, stack, reverse", %{t: t} do
      assert_same(&Nx.put_slice(&1, [0, 1, 2], Nx.tensor([[[100, 101]]])), [t])
      assert_same(&Nx.put_slice(&1, [Nx.tensor(1), 2, 3], Nx.tensor([[[7.5, 8.5]]])), [t])
      assert_same(&Nx.concatenate([&1, &1], axis: 1), [t])
      assert_same(&Nx.stack([&1, &1], axis: 2), [t])
      assert_same(&Nx.reverse(&1, axes: [0, 2]), [t])
    end

    test "as_type and bitcast" do
      f = Nx.tensor([-1.5, 0.5, 2.7, :nan, :infinity, :neg_infinity])
      assert_same(&Nx.as_type(&1, :s32), [f])
      assert_same(&Nx.as_type(&1, :u8), [f])
      assert_same(&Nx.as_type(&1, :f16), [f])
      assert_same(&Nx.bitcast(&1, :s32), [Nx.tensor([1.0, -2.0])])
    end
  end

  test "scalar constants of one type with tensors of another (converted on the host)" do
    # values every type involved holds exactly (half precision rounds
    # differently in Nx and MLX), then large integers into wide types
    small = for n <- [7, -3, 2.5, -0.75, 100], {_, st} <- @types, do: {n, st}

    large =
      for n <- [4_000_000_000, -9_000_000_000_000_000_000],
          st <- [{:s, 64}, {:f, 64}],
          do: {n, st}

    for {_, type} <- @types,
        type != {:c, 64},
        {n, stype} <- small ++ large,
        stype != {:c, 64},
        is_integer(n) or Nx.Type.float?(stype),
        n >= 0 or elem(stype, 0) != :u,
        {n, stype} in small or type in [{:s, 64}, {:f, 32}, {:f, 64}] do
      s = Nx.tensor(n, type: stype, backend: Nx.BinaryBackend)
      t = Nx.tensor([1, 2], type: type, backend: Nx.BinaryBackend)
      want = Nx.add(t, s)
      got = Nx.add(Nx.backend_copy(t, EMLX.Backend), Nx.backend_copy(s, EMLX.Backend))
      assert got.type == want.type

      assert Nx.to_binary(got) == Nx.to_binary(want),
             "#{inspect(type)} + #{inspect(n)} as #{inspect(stype)}"
    end
  end

  describe "element-wise" do
    defp floats,
      do: Nx.tensor([-2.5, -1.0, -0.5, 0.0, 0.25, 0.5, 1.5, 3.0], backend: Nx.BinaryBackend)

    defp positive, do: Nx.tensor([0.1, 0.5, 1.0, 2.0, 10.0], backend: Nx.BinaryBackend)
    defp unit, do: Nx.tensor([-0.9, -0.5, 0.0, 0.3, 0.7], backend: Nx.BinaryBackend)
    defp ints, do: Nx.tensor([-7, -3, -1, 0, 1, 2, 5, 100], backend: Nx.BinaryBackend)

    for op <-
          [:abs, :negate, :sign, :floor, :ceil, :round, :exp, :expm1, :sigmoid, :sin] ++
            [:cos, :tan, :sinh, :cosh, :tanh, :atan, :asinh, :erf, :erfc, :cbrt] ++
            [:is_nan, :is_infinity, :conjugate, :real, :imag] do
      test "#{op} on floats" do
        assert_same(&apply(Nx, unquote(op), [&1]), [floats()])
      end
    end

    for op <- [:log, :log1p, :sqrt, :rsqrt, :acosh] do
      test "#{op} on positive floats" do
        assert_same(&apply(Nx, unquote(op), [&1]), [Nx.add(positive(), 1)])
      end
    end

    for op <- [:asin, :acos, :atanh, :erf_inv] do
      test "#{op} on (-1, 1)" do
        assert_same(&apply(Nx, unquote(op), [&1]), [unit()])
      end
    end

    for op <- [:abs, :negate, :sign, :bitwise_not, :population_count, :count_leading_zeros] do
      test "#{op} on integers" do
        assert_same(&apply(Nx, unquote(op), [&1]), [ints()])
        assert_same(&apply(Nx, unquote(op), [&1]), [Nx.as_type(Nx.abs(ints()), :u8)])
      end
    end

    test "pow on floats" do
      assert_same(&Nx.pow(&1, &2), [positive(), Nx.tensor([[1.5], [-2.0]])])
    end

    for op <-
          [:add, :subtract, :multiply, :divide, :atan2, :min, :max, :remainder] ++
            [:equal, :not_equal, :greater, :less, :greater_equal, :less_equal] ++
            [:logical_and, :logical_or, :logical_xor] do
      test "#{op} on floats, with broadcasting" do
        b = Nx.tensor([[1.5], [-2.0]])
        assert_same(&apply(Nx, unquote(op), [&1, &2]), [floats(), b])
      end
    end

    for op <-
          [:add, :subtract, :multiply, :quotient, :remainder, :min, :max] ++
            [:bitwise_and, :bitwise_or, :bitwise_xor, :left_shift, :right_shift] ++
            [:equal, :less, :logical_and] do
      test "#{op} on integers" do
        a = Nx.tensor([-7, -3, -1, 0, 1, 2, 5, 100])

        b =
          Nx.tensor([
            2,
            if(unquote(op) in [:left_shift, :right_shift], do: 2, else: -2),
            3,
            1,
            4,
            3,
            2,
            7
          ])

        assert_same(&apply(Nx, unquote(op), [&1, &2]), [a, b])
      end
    end

    test "integer pow and overflow wrap like Nx" do
      assert_same(&Nx.pow(&1, &2), [Nx.tensor([2, 3, -2, 0]), Nx.tensor([10, 3, 3, 0])])
      assert_same(&Nx.multiply(&1, &1), [Nx.tensor([200, 16], type: :u8)])
      assert_same(&Nx.add(&1, 1), [Nx.tensor([2_147_483_647], type: :s32)])
    end

    test "mixed types promote as Nx does" do
      assert_same(&Nx.add(&1, &2), [
        Nx.tensor([1, 2], type: :u8),
        Nx.tensor([0.5, 1.5], type: :f16)
      ])

      assert_same(&Nx.divide(&1, &2), [Nx.tensor([1, 7]), Nx.tensor([2, 2])])
    end

    test "select and clip" do
      assert_same(&Nx.select(&1, &2, &3), [
        Nx.tensor([1, 0, 1]),
        Nx.tensor([1.0, 2.0, 3.0]),
        Nx.tensor(0)
      ])

      assert_same(&Nx.clip(&1, 0, 2), [ints()])
    end

    test "complex arithmetic" do
      a = Nx.tensor([Complex.new(1, 2), Complex.new(-1, 0.5)])
      b = Nx.tensor([Complex.new(0, 1), Complex.new(2, -1)])
      assert_same(&Nx.multiply(&1, &2), [a, b])
      assert_same(&Nx.abs(&1), [a])
      assert_same(&Nx.phase(&1), [a])
      assert_same(&Nx.exp(&1), [a])
    end
  end

  describe "reductions" do
    setup do
      %{
        t: Nx.tensor([[1, -2, 3], [4, 5, -6]]),
        f: Nx.tensor([[1.5, :nan, 3.0], [4.0, 5.0, -6.0]])
      }
    end

    test "sum, product, max, min, all, any", %{t: t} do
      for fun <- [
            &Nx.sum/2,
            &Nx.product/2,
            &Nx.reduce_max/2,
            &Nx.reduce_min/2,
            &Nx.all/2,
            &Nx.any/2
          ] do
        assert_same(&fun.(&1, []), [t])
        assert_same(&fun.(&1, axes: [1]), [t])
        assert_same(&fun.(&1, axes: [0], keep_axes: true), [t])
      end
    end

    test "sum promotes small integers", %{t: t} do
      assert_same(&Nx.sum/1, [Nx.as_type(t, :u8)])
      assert_same(&Nx.sum/1, [Nx.as_type(t, :s8)])
    end

    test "argmax and argmin with tie_break, keep_axis and NaN", %{f: f} do
      ties = Nx.tensor([[1, 3, 3], [2, 2, 0]])

      for fun <- [&Nx.argmax/2, &Nx.argmin/2] do
        assert_same(&fun.(&1, []), [ties])
        assert_same(&fun.(&1, axis: 1, tie_break: :high), [ties])
        assert_same(&fun.(&1, axis: 0, keep_axis: true), [ties])
        assert_same(&fun.(&1, axis: 1), [f])
      end

      # Nx's own test: a NaN wins, and of several NaNs the last one, with
      # either tie break
      t =
        Nx.tensor([
          [:neg_infinity, :infinity, 1],
          [:neg_infinity, :nan, 1],
          [:infinity, :infinity, 1],
          [:nan, :nan, 1],
          [:nan, 0, :nan]
        ])

      assert Nx.to_flat_list(Nx.argmax(emlx(t), axis: 1)) == [1, 1, 0, 1, 2]
      assert Nx.to_flat_list(Nx.argmin(emlx(t), axis: 1)) == [0, 1, 2, 1, 2]

      for fun <- [&Nx.argmax/2, &Nx.argmin/2], tie <- [:low, :high], axis <- [0, 1] do
        assert_same(&fun.(&1, axis: axis, tie_break: tie), [t])
      end
    end
  end

  describe "dot" do
    test "matrix and batched float dot" do
      a = Nx.iota({2, 3, 4}, type: :f32)
      b = Nx.iota({2, 4, 5}, type: :f32)
      assert_same(&Nx.dot(&1, [2], [0], &2, [1], [0]), [a, b])
      assert_same(&Nx.dot(&1, [1, 2], &2, [0, 1]), [a, Nx.iota({3, 4, 2}, type: :f32)])
      assert_same(&Nx.dot/2, [Nx.tensor([1.0, 2.0]), Nx.tensor([3.0, 4.0])])
    end

    test "integer dot is exact" do
      a = Nx.tensor([[3_000_000_000, 7], [1, -1]], type: :s64)
      b = Nx.tensor([[3, 1], [2, 5]], type: :s64)
      assert_same(&Nx.dot/2, [a, b])
      assert_same(&Nx.dot/2, [Nx.iota({3, 4}, type: :u8), Nx.iota({4, 2}, type: :u8)])
    end

    test "f64 dot" do
      a = Nx.tensor([[1.0e-10, 1.0], [1.0, 1.0e10]], type: :f64)
      assert_same(&Nx.dot/2, [a, a], tol: 1.0e-12)
    end
  end

  describe "sort and indexing" do
    test "sort and argsort with direction, stability and NaN" do
      t = Nx.tensor([[3.0, :nan, 1.0, 3.0], [2.0, 2.0, -1.0, 5.0]])

      for dir <- [:asc, :desc] do
        assert_same(&Nx.sort(&1, axis: 1, direction: dir), [t])
        assert_same(&Nx.argsort(&1, axis: 1, direction: dir, stable: true), [t])
        assert_same(&Nx.argsort(&1, axis: 0, direction: dir, stable: true), [t])
      end
    end

    test "gather, take and take_along_axis" do
      t = Nx.iota({3, 4})
      assert_same(&Nx.gather(&1, &2), [t, Nx.tensor([[0, 1], [2, 3], [1, 0]])])
      assert_same(&Nx.gather(&1, &2, axes: [1]), [t, Nx.tensor([[3], [0]])])
      assert_same(&Nx.take(&1, &2, axis: 1), [t, Nx.tensor([[3, 0], [1, 1]])])
      assert_same(&Nx.take_along_axis(&1, &2, axis: 1), [t, Nx.tensor([[3], [0], [2]])])
    end

    test "indexed_add and indexed_put" do
      t = Nx.iota({3, 4}, type: :f32)
      idx = Nx.tensor([[0, 1], [2, 3], [0, 1]])
      upd = Nx.tensor([10.0, 20.0, 30.0])
      assert_same(&Nx.indexed_add(&1, &2, &3), [t, idx, upd])

      assert_same(&Nx.indexed_put(&1, &2, &3), [
        t,
        Nx.tensor([[0, 1], [2, 3]]),
        Nx.tensor([1.0, 2.0])
      ])

      assert_same(&Nx.indexed_add(&1, &2, &3, axes: [1]), [
        t,
        Nx.tensor([[1], [1]]),
        Nx.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
      ])
    end

    test "cumulative ops" do
      t = Nx.tensor([[1, 3, 2], [4, -1, 6]])

      for fun <- [
            &Nx.cumulative_sum/2,
            &Nx.cumulative_product/2,
            &Nx.cumulative_max/2,
            &Nx.cumulative_min/2
          ] do
        assert_same(&fun.(&1, axis: 1), [t])
        assert_same(&fun.(&1, axis: 0, reverse: true), [t])
      end
    end
  end

  # Issue 14: with left_side: false a vector b is a row (x a = b); it was
  # taken as a column, and Nx's gradients, which solve so, failed.
  describe "triangular_solve with left_side: false and a vector b" do
    test "solves x a = b, and its gradients match Nx's" do
      bin = &Nx.tensor(&1, backend: Nx.BinaryBackend)
      a = bin.([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
      b = bin.([2.0, 3.0, 4.0])

      batched =
        {bin.([[[1.0, 0.0], [2.0, 3.0]], [[2.0, 0.0], [1.0, 4.0]]]),
         bin.([[1.0, 2.0], [3.0, 5.0]])}

      solve = &Nx.LinAlg.triangular_solve(&1, &2, left_side: false, lower: false)
      assert_same(solve, [a, b])
      assert_same(solve, [Nx.as_type(a, :c64), Nx.as_type(b, :c64)])

      grads = [
        fn a, b -> Nx.Defn.grad(a, &(solve.(Nx.sin(&1), Nx.cos(b)) |> Nx.sin() |> Nx.sum())) end,
        fn a, b -> Nx.Defn.grad(b, &(solve.(Nx.sin(a), Nx.cos(&1)) |> Nx.sin() |> Nx.sum())) end,
        fn a, b ->
          Nx.Defn.grad(a, &(Nx.LinAlg.triangular_solve(&1, b, left_side: false) |> Nx.sum()))
        end
      ]

      for grad <- grads, {x, y} <- [{a, b}, batched], compiler <- [Nx.Defn.Evaluator, EMLX] do
        want =
          Nx.with_default_backend(Nx.BinaryBackend, fn ->
            Nx.Defn.jit(grad, compiler: Nx.Defn.Evaluator).(x, y)
          end)

        assert %Nx.BinaryBackend{} = want.data
        got = Nx.Defn.jit(grad, compiler: compiler).(to_emlx(x), to_emlx(y))
        assert_tensor(got, want, tol: 1.0e-5)
      end
    end
  end

  # Issue 14: MLX has no complex atan2; Nx defines it for real-valued
  # complex numbers and raises otherwise.
  test "atan2 of complex tensors, as Nx.BinaryBackend" do
    a = Nx.tensor([Complex.new(7, 0), Complex.new(-1, 0), Complex.new(0, 0)])
    b = Nx.tensor([Complex.new(2, 0), Complex.new(2, 0), Complex.new(-3, 0)])
    assert_same(&Nx.atan2/2, [a, b])
    assert_same(&Nx.atan2/2, [a, Nx.tensor([1.0, -2.0, 0.5])])

    for {x, y} <- [{7, Complex.new(2, 3)}, {Complex.new(2, 3), 7}] do
      assert_raise ArithmeticError, "Complex.atan2 only accepts real numbers as arguments", fn ->
        Nx.atan2(to_emlx(Nx.tensor(x)), to_emlx(Nx.tensor(y)))
      end
    end
  end

  defp to_emlx(t), do: Nx.backend_copy(t, {EMLX.Backend, device: device()})
end
