defmodule EMLX.EmulatedTypesTest do
  @moduledoc """
  The types MLX lacks (c128, f8, f8_e4m3fn, u2, u4, s2, s4): stored as
  their Nx binary in a uint8 MLX array and computed with
  Nx.BinaryBackend's implementation (EMLX.Backend.Emulated), eagerly and
  under `compiler: EMLX` (the c128 callbacks EMLX.Backend.Complex128 runs
  on MLX among them; their own cases are in complex128_test.exs). Every
  result is compared with Nx.BinaryBackend bit for bit.
  """
  use EMLX.Case, async: true

  import EMLX.EmulatedCases

  defp bin(data, type), do: Nx.tensor(data, type: type, backend: Nx.BinaryBackend)

  defp c128, do: bin(c128_values(), :c128)

  # The MLX array under an EMLX tensor: {shape, type}.
  defp storage(%Nx.Tensor{} = t) do
    {device, ref} = EMLX.Backend.from_nx(t)
    assert device == device()
    {shape, type, _owner} = EMLX.Worker.info(ref)
    {shape, type}
  end

  describe "storage" do
    test "an emulated tensor holds its Nx binary in a uint8 array, padded to whole bytes" do
      for {type, values, bytes} <- [
            {{:c, 128}, [Complex.new(1, 2), Complex.new(-0.5, 0.1)], 32},
            {{:f, 8}, [1.5, -2.0, 0.25], 3},
            {{:f8_e4m3fn, 8}, [1.5, -2.0, 0.25], 3},
            {{:u, 2}, [3, 0, 2, 1, 1], 2},
            {{:u, 4}, [15, 0, 7], 2},
            {{:s, 2}, [-2, 1, 0], 1},
            {{:s, 4}, [-8, 7, 0, -1, 5], 3}
          ] do
        t = emlx(values, type: type)
        want = bin(values, type)
        assert t.type == type
        assert storage(t) == {{bytes}, {:u, 8}}
        assert Nx.to_binary(t) == Nx.to_binary(want)
        assert bit_size(Nx.to_binary(t)) == length(values) * elem(type, 1)
        assert Nx.to_binary(t, limit: 2) == Nx.to_binary(want, limit: 2)
        assert Nx.to_flat_list(t) == Nx.to_flat_list(want)
      end
    end

    test "every creation callback gives Nx.BinaryBackend's bits" do
      for type <- EMLX.Types.emulated() do
        one = if match?({:c, _}, type), do: Complex.new(1, -1), else: 1

        assert_emulated(fn -> Nx.tensor(one, type: type) end, [], device())

        # Nx.BinaryBackend's broadcast takes whole bytes (it raises for sub-byte types)
        if elem(type, 1) >= 8 do
          assert_emulated(
            fn -> Nx.broadcast(Nx.tensor(one, type: type), {2, 3}) end,
            [],
            device()
          )
        end

        assert_emulated(fn -> Nx.iota({2, 3}, type: type, axis: 1) end, [], device())
        assert_emulated(fn -> Nx.eye(3, type: type) end, [], device())

        binary = Nx.to_binary(Nx.iota({8}, type: type, backend: Nx.BinaryBackend))
        assert_emulated(fn -> Nx.from_binary(binary, type) end, [], device())
      end
    end

    test "EMLX.Types: every type is supported, the emulated ones are not MLX's" do
      for type <- EMLX.Types.emulated() do
        assert EMLX.Types.emulated?(type)
        assert EMLX.Types.check!(type, :test) == :ok
        assert type in EMLX.Backend.supported_types()
        refute type in EMLX.Types.native()

        assert_raise ArgumentError,
                     ~r/MLX has no #{Nx.Type.to_string(type)} type, and test/,
                     fn ->
                       EMLX.Types.native!(type, "test")
                     end
      end

      for type <- EMLX.Types.native(), do: refute(EMLX.Types.emulated?(type))
      refute EMLX.Types.emulated?({:tuple, 2})

      assert_raise ArgumentError, ~r/not a type EMLX stores/, fn ->
        EMLX.Types.check!({:f, 7}, :x)
      end
    end
  end

  describe "c128" do
    for {name, fun} <- c128_unary() do
      test "#{name} equals Nx.BinaryBackend bit for bit" do
        assert_emulated(unquote(fun), [c128()], device())
      end
    end

    for {name, fun} <- c128_binary() do
      test "#{name} (c128 with c128, f32 and a number) equals Nx.BinaryBackend" do
        fun = unquote(fun)
        x = c128()
        y = Nx.reverse(x, axes: [1])
        f32 = bin([[0.5, -1.0, 2.0, 3.0]], :f32)
        assert_emulated(fun, [x, y], device())
        assert_emulated(fun, [x, f32], device())
        assert_emulated(fun, [f32, x], device())
        assert_emulated(&fun.(&1, 0.3), [x], device())
      end
    end

    test "sum and product" do
      x = c128()
      assert_emulated(&Nx.sum/1, [x], device())
      assert_emulated(&Nx.sum(&1, axes: [1]), [x], device())
      assert_emulated(&Nx.product(&1, axes: [0], keep_axes: true), [x], device())
    end

    test "reshape, transpose, slice, concatenate, put_slice, pad, reverse, gather" do
      x = c128()
      assert_emulated(&Nx.reshape(&1, {4, 3}), [x], device())
      assert_emulated(&Nx.transpose/1, [x], device())
      assert_emulated(&Nx.slice(&1, [1, 1], [2, 2]), [x], device())
      assert_emulated(&Nx.slice(&1, [0, 0], [3, 2], strides: [2, 1]), [x], device())
      assert_emulated(&Nx.slice(&1, [Nx.tensor(2), Nx.tensor(1)], [2, 2]), [x], device())
      assert_emulated(&Nx.put_slice(&1, [Nx.tensor(1), 0], Nx.reverse(&1)), [x], device())
      assert_emulated(&Nx.broadcast(&1, {2, 3, 4}), [x], device())
      assert_emulated(&Nx.broadcast(&1[0], {3, 4}, axes: [1]), [x], device())
      assert_emulated(&Nx.squeeze(Nx.reshape(&1, {1, 3, 1, 4})), [x], device())
      assert_emulated(&Nx.transpose(Nx.reshape(&1, {2, 3, 2}), axes: [2, 0, 1]), [x], device())
      assert_emulated(&Nx.reverse(&1, axes: [1]), [x], device())
      assert_emulated(&Nx.concatenate([&1, Nx.reverse(&1)], axis: 0), [x], device())
      assert_emulated(&Nx.concatenate([&1, &1], axis: 1), [x], device())
      assert_emulated(&Nx.stack([&1, &1]), [x], device())
      assert_emulated(&Nx.put_slice(&1, [1, 2], Nx.tensor([[Complex.new(9, 9)]])), [x], device())
      assert_emulated(&Nx.pad(&1, Complex.new(0, 1), [{1, 0, 0}, {0, 1, 1}]), [x], device())
      assert_emulated(&Nx.reverse/1, [x], device())
      assert_emulated(&Nx.take(&1, Nx.tensor([2, 0]), axis: 0), [x], device())
      assert_emulated(&Nx.gather(&1, Nx.tensor([[0, 1], [2, 3]])), [x], device())
    end

    test "a mixed concatenate of c64 and c128 on EMLX goes to Nx.BinaryBackend" do
      x = c128()
      c64 = Nx.as_type(x, :c64)
      assert_emulated(&Nx.concatenate([&2, &1]), [x, c64], device())
    end

    test "as_type to and from c128" do
      x = c128()
      assert_emulated(&Nx.as_type(&1, :c64), [x], device())
      assert_emulated(&Nx.as_type(&1, :f64), [x], device())
      assert_emulated(&Nx.as_type(&1, :f32), [x], device())
      assert_emulated(&Nx.as_type(&1, :c128), [Nx.as_type(x, :c64)], device())
      assert_emulated(&Nx.as_type(&1, :c128), [bin([0.1, -2.5, 1.0e10], :f64)], device())
      assert_emulated(&Nx.as_type(&1, :c128), [bin([1, -7], :s32)], device())

      # an f64 -> c128 cast keeps every bit of the f64 (c64 would round it)
      f64 = emlx([0.1, 1 / 3], type: :f64)
      assert Nx.to_list(Nx.real(Nx.as_type(f64, :c128))) == Nx.to_list(f64)
    end

    test "Nx.complex of f64 parts, and Nx.Constants.i" do
      re = bin([0.1, 0.2], :f64)
      im = bin([1 / 3, -2.0], :f64)
      assert_emulated(&Nx.complex/2, [re, im], device())
      assert_emulated(fn -> Nx.Constants.i(:c128) end, [], device())
    end

    test "cumulative sum, sort by real part, vectorized tensors" do
      x = c128()
      assert_emulated(&Nx.cumulative_sum(&1, axis: 1), [x], device())

      assert_emulated(
        fn x -> x |> Nx.vectorize(:rows) |> Nx.multiply(2) |> Nx.sum() |> Nx.devectorize() end,
        [x],
        device()
      )
    end

    test "results stay on the input's device and on the bound command queue" do
      queue = EMLX.CommandQueue.new!(device())
      x = emlx(c128_values(), type: :c128)

      y =
        EMLX.CommandQueue.with_queue(queue, fn ->
          Nx.multiply(x, x) |> Nx.add(1)
        end)

      assert y.data.device == device()
      assert y.data.queue == queue.ref
      assert Nx.to_binary(y) == Nx.to_binary(Nx.add(Nx.multiply(c128(), c128()), 1))

      # a native result of an emulated op: an MLX array of its own type there
      r = EMLX.CommandQueue.with_queue(queue, fn -> Nx.real(x) end)
      assert r.data.queue == queue.ref
      assert storage(r) == {{3, 4}, {:f, 64}}
    end

    test "backend_copy, backend_transfer and deallocate" do
      x = emlx(c128_values(), type: :c128)
      copy = Nx.backend_copy(x, EMLX.Backend)
      assert copy.data.ref != x.data.ref
      assert Nx.to_binary(copy) == Nx.to_binary(c128())

      on_bin = Nx.backend_transfer(copy, Nx.BinaryBackend)
      assert %Nx.BinaryBackend{} = on_bin.data
      assert on_bin == c128()

      back = Nx.backend_transfer(on_bin, {EMLX.Backend, device: device()})
      assert Nx.to_binary(back) == Nx.to_binary(c128())
      assert Nx.backend_deallocate(back) == :ok
    end

    test "inspect prints Nx.BinaryBackend's digits" do
      x = emlx([Complex.new(0.1, -2.0), Complex.new(1 / 3, 0)], type: :c128)

      assert inspect(x) ==
               inspect(bin([Complex.new(0.1, -2.0), Complex.new(1 / 3, 0)], :c128))

      assert inspect(x) =~ "c128[2]"
      assert inspect(x) =~ "0.1-2.0i"
      assert inspect(x) =~ "0.3333333333333333+0.0i"
    end

    test "to_pointer gives the stored bytes, from_pointer reads them back" do
      x = emlx(c128_values(), type: :c128)
      pointer = Nx.to_pointer(x, mode: :local)
      assert pointer.data_size == 12 * 16
      y = Nx.from_pointer({EMLX.Backend, device: device()}, pointer, :c128, {3, 4})
      assert y.type == {:c, 128}
      assert Nx.to_binary(y) == Nx.to_binary(c128())
    end
  end

  describe "c128 under compiler: EMLX" do
    defp jit_same(fun, args) do
      got =
        apply(
          Nx.Defn.jit(fun, compiler: EMLX),
          Enum.map(args, &Nx.backend_copy(&1, {EMLX.Backend, device: device()}))
        )

      want = apply(Nx.Defn.jit(fun, compiler: Nx.Defn.Evaluator), args)
      assert_bits(got, want)
      got
    end

    test "a function of c128 runs op by op, as Nx's evaluator on Nx.BinaryBackend" do
      # (the dot's operands have small integer parts: its sums are exact)
      fun = fn x, y, z ->
        {Nx.sum(Nx.multiply(Nx.exp(x), y)), Nx.abs(Nx.dot(z, Nx.transpose(z))), Nx.real(x)}
      end

      x = c128()
      y = Nx.multiply(x, Complex.new(0.5, -0.25))
      z = bin(c128_int_values(), :c128)
      {s, a, r} = jit_same(fun, [x, y, z])
      assert s.data.device == device()
      assert a.type == {:f, 64}
      assert r.type == {:f, 64}

      # the second call reuses the cached decision (and gives the same bits)
      {s2, _, _} = jit_same(fun, [x, y, z])
      assert Nx.to_binary(s2) == Nx.to_binary(s)
    end

    test "the decision is cached with the plan: a second call does not trace again" do
      counter = :counters.new(1, [])

      fun =
        Nx.Defn.jit(
          fn x ->
            :counters.add(counter, 1, 1)
            Nx.multiply(x, Nx.conjugate(x))
          end,
          compiler: EMLX
        )

      x = Nx.backend_copy(c128(), {EMLX.Backend, device: device()})
      first = fun.(x)
      second = fun.(x)
      assert :counters.get(counter, 1) == 1
      assert Nx.to_binary(first) == Nx.to_binary(second)
      assert Nx.to_binary(first) == Nx.to_binary(Nx.multiply(c128(), Nx.conjugate(c128())))
    end

    test "an f64 input with a c128 intermediate, a while loop and a cond" do
      jit_same(&EMLX.EmulatedCases.Defns.c128_loop/1, [bin([0.1, -0.7, 1.3], :f64)])
      jit_same(&EMLX.EmulatedCases.Defns.c128_loop/1, [bin([-0.1, -0.7, 0.3], :f64)])
    end

    test "grad through complex functions" do
      for f <- [&Nx.exp/1, &Nx.sin/1, &Nx.sqrt/1, &Nx.conjugate/1, &Nx.log/1] do
        fun = fn x -> Nx.Defn.grad(x, fn y -> y |> f.() |> Nx.abs() |> Nx.sum() end) end
        jit_same(fun, [c128()])
      end

      # an f64 input whose gradient passes through c128
      fun = fn x ->
        Nx.Defn.grad(x, fn y ->
          y |> Nx.complex(Nx.multiply(y, 2)) |> Nx.exp() |> Nx.imag() |> Nx.sum()
        end)
      end

      jit_same(fun, [bin([0.1, -0.2, 0.3], :f64)])
    end

    test "a c64 function still records one MLX program" do
      fun = Nx.Defn.jit(fn x -> Nx.multiply(Nx.exp(x), 2) end, compiler: EMLX)
      x = emlx([Complex.new(1, 2)], type: :c64)
      assert Nx.to_flat_list(fun.(x)) == Nx.to_flat_list(Nx.multiply(Nx.exp(x), 2))
      assert %EMLX.Backend{} = fun.(x).data
    end
  end

  describe "f8 and f8_e4m3fn" do
    for type <- f8_types() do
      @type_ type
      test "#{Nx.Type.to_string(type)}: creation rounds as Nx does, round trips its binary" do
        values = f8_values(@type_)
        want = bin(values, @type_)
        got = emlx(values, type: @type_)
        assert Nx.to_binary(got) == Nx.to_binary(want)
        assert storage(got) == {{length(values)}, {:u, 8}}

        again =
          Nx.from_binary(Nx.to_binary(got), @type_, backend: {EMLX.Backend, device: device()})

        assert Nx.to_binary(again) == Nx.to_binary(want)
        assert Nx.to_flat_list(got) == Nx.to_flat_list(want)
      end

      test "#{Nx.Type.to_string(type)}: arithmetic, reductions and as_type" do
        x = bin(f8_values(@type_), @type_)
        y = bin(Enum.reverse(f8_values(@type_)), @type_)
        assert_emulated(&Nx.add/2, [x, y], device())
        assert_emulated(&Nx.multiply/2, [x, y], device())
        assert_emulated(&Nx.divide(&1, 3), [x], device())
        assert_emulated(&Nx.sin/1, [x], device())
        assert_emulated(&Nx.sum/1, [x], device())
        assert_emulated(&Nx.reduce_max/1, [x], device())
        assert_emulated(&Nx.argsort/1, [x], device())
        assert_emulated(&Nx.as_type(&1, :f32), [x], device())

        assert_emulated(
          &Nx.as_type(&1, @type_),
          [bin([0.1, 1.0e6, -3.3, 2.0e-4], :f32)],
          device()
        )

        assert_emulated(&Nx.bitcast(&1, :u8), [x], device())
        assert_emulated(&Nx.bitcast(&1, @type_), [bin([1, 60, 200, 255], :u8)], device())
        assert_emulated(&Nx.greater(&1, &2), [x, y], device())
      end

      test "#{Nx.Type.to_string(type)}: inspect prints Nx's values" do
        values = [1.5, -3.0, 0.5]
        got = emlx(values, type: @type_)
        assert inspect(got) == inspect(bin(values, @type_))
        assert inspect(got) =~ "#{Nx.Type.to_string(@type_)}[3]"
        assert inspect(got) =~ "[1.5, -3.0, 0.5]"
      end
    end

    test "Nx.Constants in f8" do
      for fun <- [
            &Nx.Constants.pi/1,
            &Nx.Constants.e/1,
            &Nx.Constants.nan/1,
            &Nx.Constants.infinity/1
          ] do
        assert_emulated(fn -> fun.({:f, 8}) end, [], device())
      end

      assert_emulated(fn -> Nx.Constants.max_finite({:f8_e4m3fn, 8}) end, [], device())
    end
  end

  describe "u2, u4, s2, s4" do
    for type <- subbyte_types() do
      @type_ type
      test "#{Nx.Type.to_string(type)}: creation, bit-packed binary, bit and byte sizes" do
        values = subbyte_values(@type_)
        got = emlx(values, type: @type_)
        want = bin(values, @type_)
        assert Nx.to_binary(got) == Nx.to_binary(want)
        assert bit_size(Nx.to_binary(got)) == length(values) * elem(@type_, 1)
        assert Nx.to_flat_list(got) == values
        assert Nx.bit_size(got) == Nx.bit_size(want)
        assert Nx.byte_size(got) == Nx.byte_size(want)

        # a whole number of bytes of elements through Nx.from_binary/3
        bytes = <<0b10110100, 0b01111000>>
        from = Nx.from_binary(bytes, @type_, backend: {EMLX.Backend, device: device()})
        assert Nx.to_binary(from) == bytes

        assert Nx.to_flat_list(from) ==
                 Nx.to_flat_list(Nx.from_binary(bytes, @type_, backend: Nx.BinaryBackend))
      end

      test "#{Nx.Type.to_string(type)}: arithmetic wraps as Nx does, reductions, as_type" do
        x = bin(subbyte_values(@type_), @type_)
        y = Nx.reverse(x)
        assert_emulated(&Nx.add/2, [x, y], device())
        assert_emulated(&Nx.multiply/2, [x, y], device())
        assert_emulated(&Nx.subtract(&1, 1), [x], device())
        assert_emulated(&Nx.bitwise_xor/2, [x, y], device())
        assert_emulated(&Nx.sum/1, [x], device())
        assert_emulated(&Nx.reduce_min/1, [x], device())
        assert_emulated(&Nx.argmax/1, [x], device())
        assert_emulated(&Nx.sort/1, [x], device())
        assert_emulated(&Nx.as_type(&1, :s32), [x], device())
        assert_emulated(&Nx.as_type(&1, :f32), [x], device())
        assert_emulated(&Nx.as_type(&1, @type_), [bin([0, 1, 2, 3, 9, -5], :s32)], device())
        assert_emulated(&Nx.concatenate([&1, &1, &1]), [x], device())
        assert_emulated(&Nx.slice(&1, [1], [3]), [x], device())
      end

      test "#{Nx.Type.to_string(type)}: inspect prints the values" do
        values = subbyte_values(@type_)
        got = emlx(values, type: @type_)
        assert inspect(got) =~ "#{Nx.Type.to_string(@type_)}[#{length(values)}]"
        assert inspect(got) =~ "[" <> Enum.map_join(values, ", ", &Integer.to_string/1) <> "]"
      end
    end

    test "sub-byte indices of an f32 tensor (indexed_add and take)" do
      t = bin([1.0, 2.0, 3.0, 4.0], :f32)

      for type <- subbyte_types() do
        idx = bin([[1], [0], [1]], type)
        upd = bin([10.0, 20.0, 30.0], :f32)
        got = assert_emulated(&Nx.indexed_add/3, [t, idx, upd], device())
        assert got.type == {:f, 32}
        assert storage(got) == {{4}, {:f, 32}}
        assert_emulated(&Nx.take(&1, &2), [t, bin([1, 0, 1], type)], device())
      end
    end

    test "sub-byte start indices of slice and put_slice (found in the list argument)" do
      t = bin([0, 1, 2, 3, 4, 5], :s32)

      for type <- subbyte_types() do
        i = bin(1, type)
        got = assert_emulated(&Nx.slice(&1, [&2], [2]), [t, i], device())
        assert storage(got) == {{2}, {:s, 32}}
        assert_emulated(&Nx.put_slice(&1, [&2], Nx.tensor([9, 9])), [t, i], device())
      end
    end

    test "to_batched of an odd number of u4 elements" do
      x = bin(Enum.to_list(0..14), :u4)

      got =
        Nx.to_batched(Nx.backend_copy(x, {EMLX.Backend, device: device()}), 4) |> Enum.to_list()

      want = Nx.to_batched(x, 4) |> Enum.to_list()
      assert length(got) == 4
      Enum.zip_with(got, want, &assert_bits/2)
    end

    test "a defn on s4 under compiler: EMLX" do
      fun = Nx.Defn.jit(fn x -> x |> Nx.add(3) |> Nx.multiply(x) end, compiler: EMLX)
      x = bin([-8, -1, 0, 5, 7], :s4)
      got = fun.(Nx.backend_copy(x, {EMLX.Backend, device: device()}))

      want =
        Nx.Defn.jit(fn x -> x |> Nx.add(3) |> Nx.multiply(x) end, compiler: Nx.Defn.Evaluator).(x)

      assert_bits(got, want)
    end
  end

  describe "MLX-only features raise naming the type" do
    test "safetensors, EMLX.Fast, MLX array arguments" do
      x = emlx([Complex.new(1, 2)], type: :c128)
      path = Path.join(System.tmp_dir!(), "emlx-emulated-#{System.unique_integer([:positive])}")

      assert_raise ArgumentError, ~r/MLX has no c128 type, and safetensors/, fn ->
        EMLX.save_safetensors(path <> ".safetensors", %{"x" => x})
      end

      refute File.exists?(path <> ".safetensors")

      f8 = emlx([1.0, 2.0], type: :f8)

      assert_raise ArgumentError, ~r/must be a float tensor.*got: \{:f, 8\}/, fn ->
        EMLX.Fast.rms_norm(f8, emlx([1.0, 1.0]), 1.0e-5)
      end

      assert_raise ArgumentError, ~r/MLX has no u4 type/, fn ->
        EMLX.Backend.ref_on(
          emlx([1, 2], type: :u4),
          device(),
          EMLX.CommandQueue.resolve(device())
        )
      end
    end
  end
end

defmodule EMLX.EmulatedTypesLimitTest do
  @moduledoc "Changes the :emlx application environment, so not async."
  use EMLX.Case, async: false

  setup do
    Application.put_env(:emlx, :emulated_max_bytes, 1_000)
    on_exit(fn -> Application.delete_env(:emlx, :emulated_max_bytes) end)
  end

  test "work on the host past :emulated_max_bytes raises instead of filling the host's memory" do
    # (the fuzz storm's as_type of a 46,340² f32 iota to c128 wanted 43 GB
    # of binaries and the VM went down)
    # (as_type to c128 runs on MLX now: EMLX.Backend.Complex128)
    x = Nx.as_type(emlx(Enum.to_list(1..200), type: :f32), :c128)

    assert_raise ArgumentError, ~r/tanh with a type MLX lacks .* past the limit of 1000/, fn ->
      Nx.tanh(x)
    end

    assert_raise ArgumentError, ~r/iota .* past the limit/, fn ->
      Nx.iota({100}, type: :c128, backend: EMLX.Backend)
    end

    # under the limit the work is done as before
    small = Nx.tanh(Nx.as_type(emlx([1, 2], type: :f32), :c128))
    want = Nx.tanh(Nx.tensor([1, 2], type: :c128, backend: Nx.BinaryBackend))
    assert Nx.to_binary(small) == Nx.to_binary(want)
  end
end
