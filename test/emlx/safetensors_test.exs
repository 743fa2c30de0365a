defmodule EMLX.SafeTensorsTest do
  @moduledoc """
  EMLX.load_safetensors/2 and save_safetensors/3 (MLX's own reader and
  writer): round trips of every type MLX's format has (all of EMLX's but
  f64), metadata, files written and read by
  Python MLX, mlx-lm's quantized layout (EMLX.Quantization.from_packed/2),
  and the errors.
  """
  use EMLX.Case, async: true

  alias EMLX.PyEnv

  setup do
    dir = Path.join(System.tmp_dir!(), "emlx-safetensors-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{tmp_dir: dir}
  end

  # Every type EMLX stores but f64, which MLX's safetensors format lacks.
  @types EMLX.Types.native() -- [{:f, 64}]

  defp sample(type, shape) do
    size = Tuple.product(shape)

    base =
      case type do
        {:c, _} -> Nx.complex(Nx.iota({size}, type: :f32), Nx.negate(Nx.iota({size}, type: :f32)))
        {:f, _} -> Nx.divide(Nx.iota({size}, type: :f64), 3)
        {:bf, _} -> Nx.divide(Nx.iota({size}, type: :f32), 3)
        {:s, _} -> Nx.subtract(Nx.iota({size}, type: :s64), div(size, 2))
        {:u, _} -> Nx.iota({size}, type: :u64)
      end

    base |> Nx.as_type(type) |> Nx.reshape(shape) |> Nx.backend_transfer(Nx.BinaryBackend)
  end

  test "every type but f64 round-trips exactly, with its shape", %{tmp_dir: dir} do
    tensors =
      for {type, i} <- Enum.with_index(@types), into: %{} do
        shape = Enum.at([{}, {7}, {2, 3}, {2, 3, 4}], rem(i, 4))
        {"t_#{Nx.Type.to_string(type)}", sample(type, shape)}
      end

    path = Path.join(dir, "all.safetensors")
    assert :ok = EMLX.save_safetensors(path, tensors)
    loaded = EMLX.load_safetensors(path)

    assert Map.keys(loaded) |> Enum.sort() == Map.keys(tensors) |> Enum.sort()

    for {name, t} <- tensors do
      got = loaded[name]
      assert %EMLX.Backend{device: device} = got.data
      assert device == device()
      assert got.type == t.type, name
      assert got.shape == t.shape, name
      assert Nx.to_binary(got) == Nx.to_binary(t), name
    end
  end

  test "f64, which MLX's safetensors format lacks, raises ArgumentError", %{tmp_dir: dir} do
    assert_raise ArgumentError, ~r/"x" is f64.*cast it to f32/, fn ->
      EMLX.save_safetensors(Path.join(dir, "f64.safetensors"), %{"x" => sample({:f, 64}, {2})})
    end
  end

  test "EMLX tensors of several queues, atom names and metadata", %{tmp_dir: dir} do
    {:ok, q} = EMLX.CommandQueue.new(device())
    a = emlx([[1.5, -2.0]], type: :bf16)
    b = EMLX.CommandQueue.with_queue(q, fn -> Nx.multiply(emlx([1, 2, 3]), 2) end)
    path = Path.join(dir, "meta.safetensors")
    :ok = EMLX.save_safetensors(path, [a: a, b: b], metadata: %{"format" => "mlx", note: "x"})

    {tensors, meta} = EMLX.load_safetensors(path, metadata: true)
    assert meta == %{"format" => "mlx", "note" => "x"}
    assert Nx.to_flat_list(tensors["a"]) == [1.5, -2.0]
    assert tensors["a"].type == {:bf, 16}
    assert Nx.to_flat_list(tensors["b"]) == [2, 4, 6]
  end

  test "a path without the extension gets it, as MLX's writer does", %{tmp_dir: dir} do
    :ok = EMLX.save_safetensors(Path.join(dir, "plain"), %{"x" => emlx([1.0])})
    assert File.exists?(Path.join(dir, "plain.safetensors"))
  end

  describe "Python MLX" do
    test "reads a file that mx.save_safetensors wrote", %{tmp_dir: dir} do
      path = Path.join(dir, "py.safetensors")

      PyEnv.eval!(
        """
        import sys, mlx.core as mx
        a = mx.arange(12, dtype=mx.float32).reshape(3, 4) / 7
        mx.save_safetensors(sys.argv[1], {
            "bf16": a.astype(mx.bfloat16), "f16": a.astype(mx.float16), "f32": a,
            "u32": mx.arange(5, dtype=mx.uint32) * 1000003, "i8": mx.array([-128, 0, 127], dtype=mx.int8),
            "bool": mx.array([True, False, True]),
        }, metadata={"format": "mlx"})
        """,
        [path]
      )

      {t, meta} = EMLX.load_safetensors(path, metadata: true)
      assert meta == %{"format" => "mlx"}
      # MLX rounds f32 to bf16 to nearest (Nx.BinaryBackend truncates): expect EMLX's casts.
      a =
        Nx.iota({3, 4}, type: :f32)
        |> Nx.divide(7)
        |> Nx.backend_transfer({EMLX.Backend, device: device()})

      assert t["bf16"].type == {:bf, 16}
      assert Nx.to_binary(t["bf16"]) == Nx.to_binary(Nx.as_type(a, :bf16))
      assert t["f16"].type == {:f, 16}
      assert Nx.to_binary(t["f16"]) == Nx.to_binary(Nx.as_type(a, :f16))
      assert Nx.to_binary(t["f32"]) == Nx.to_binary(a)
      assert Nx.to_flat_list(t["u32"]) == Enum.map(0..4, &(&1 * 1_000_003))
      assert t["i8"].type == {:s, 8} and Nx.to_flat_list(t["i8"]) == [-128, 0, 127]
      assert t["bool"].type == {:u, 8} and Nx.to_flat_list(t["bool"]) == [1, 0, 1]
    end

    test "reads what EMLX wrote, bit for bit", %{tmp_dir: dir} do
      path = Path.join(dir, "emlx.safetensors")

      tensors =
        Map.new(
          [{:bf, 16}, {:f, 16}, {:s, 64}, {:u, 8}],
          &{Nx.Type.to_string(&1), sample(&1, {2, 5})}
        )

      :ok = EMLX.save_safetensors(path, tensors)

      out =
        PyEnv.eval!(
          """
          import sys, json, mlx.core as mx
          t = mx.load(sys.argv[1])
          print(json.dumps({k: [str(v.dtype), list(v.shape), v.astype(mx.float32).tolist()] for k, v in t.items()}))
          """,
          [path]
        )
        |> String.split("\\n", trim: true)
        |> List.last()
        |> JSON.decode!()

      for {name, t} <- tensors do
        [dtype, shape, values] = out[name]

        assert dtype ==
                 "mlx.core." <>
                   %{"bf16" => "bfloat16", "f16" => "float16", "s64" => "int64", "u8" => "uint8"}[
                     name
                   ]

        assert List.to_tuple(shape) == t.shape
        assert List.flatten(values) == t |> Nx.as_type(:f32) |> Nx.to_flat_list()
      end
    end
  end

  describe "mlx-lm's quantized layout" do
    test "from_packed/2 makes quantized tensors of weight, scales and biases", %{tmp_dir: dir} do
      {w, _} = Nx.Random.normal(Nx.Random.key(7), shape: {32, 256}, type: :f32)
      w = Nx.as_type(w, :bf16) |> Nx.backend_transfer({EMLX.Backend, device: device()})
      qw = EMLX.Quantization.quantize(w, bits: 4, group_size: 64)
      qw8 = EMLX.Quantization.quantize(w, bits: 8, group_size: 32)
      parts = EMLX.Quantization.parts(qw)
      parts8 = EMLX.Quantization.parts(qw8)

      path = Path.join(dir, "q.safetensors")

      :ok =
        EMLX.save_safetensors(path, %{
          "l.weight" => parts.weight,
          "l.scales" => parts.scales,
          "l.biases" => parts.biases,
          "m.weight" => parts8.weight,
          "m.scales" => parts8.scales,
          "m.biases" => parts8.biases,
          "norm.weight" => w
        })

      config = %{
        "bits" => 4,
        "group_size" => 64,
        "mode" => "affine",
        "m" => %{"bits" => 8, "group_size" => 32}
      }

      loaded = path |> EMLX.load_safetensors() |> EMLX.Quantization.from_packed(config)

      assert Map.keys(loaded) |> Enum.sort() == ["l.weight", "m.weight", "norm.weight"]
      assert EMLX.Quantization.quantized?(loaded["l.weight"])
      assert loaded["l.weight"].shape == {32, 256}
      assert loaded["m.weight"].data.quantization_config.bits == 8
      refute EMLX.Quantization.quantized?(loaded["norm.weight"])

      for {got, want} <- [{loaded["l.weight"], qw}, {loaded["m.weight"], qw8}] do
        assert Nx.to_binary(EMLX.Quantization.dequantize(got)) ==
                 Nx.to_binary(EMLX.Quantization.dequantize(want))
      end

      assert_raise ArgumentError, ~r/only "affine"/, fn ->
        EMLX.Quantization.from_packed(loaded, %{
          "bits" => 4,
          "group_size" => 32,
          "mode" => "mxfp4"
        })
      end
    end

    for bits <- [2, 3, 4, 5, 6, 8] do
      test "Packed.matmul/5 and dequantize/4 agree with MLX and with plain Nx, #{bits} bits" do
        bits = unquote(bits)
        {w, key} = Nx.Random.normal(Nx.Random.key(bits), shape: {16, 128}, type: :f32)
        {x, _} = Nx.Random.normal(key, shape: {2, 3, 128}, type: :f32)
        w = Nx.backend_transfer(w, {EMLX.Backend, device: device()})
        x = Nx.backend_transfer(x, {EMLX.Backend, device: device()})

        p =
          w |> EMLX.Quantization.quantize(bits: bits, group_size: 32) |> EMLX.Quantization.parts()

        alias EMLX.Quantization.Packed

        dense =
          EMLX.Quantization.dequantize(EMLX.Quantization.quantize(w, bits: bits, group_size: 32))

        assert Nx.to_binary(Packed.dequantize(p.weight, p.scales, p.biases, group_size: 32)) ==
                 Nx.to_binary(dense)

        fused = Nx.Defn.jit(&Packed.matmul/4, compiler: EMLX).(x, p.weight, p.scales, p.biases)
        assert fused.shape == {2, 3, 16}
        assert_tensor(fused, to_bin(Nx.dot(x, [2], dense, [1])), tol: 1.0e-3)

        # The plain-Nx definition (on another backend) computes the same.
        [xb, wb, sb, bb] = Enum.map([x, p.weight, p.scales, p.biases], &to_bin/1)
        assert_tensor(Packed.dequantize(wb, sb, bb, group_size: 32), to_bin(dense), tol: 1.0e-6)
        assert_tensor(Packed.matmul(xb, wb, sb, bb), to_bin(fused), tol: 1.0e-3)
      end
    end
  end

  describe "errors" do
    test "a missing file, a folder and a folder that does not exist raise File.Error", %{
      tmp_dir: dir
    } do
      assert_raise File.Error, ~r/could not read safetensors from .*nope.*no such file/, fn ->
        EMLX.load_safetensors(Path.join(dir, "nope.safetensors"))
      end

      assert_raise File.Error, ~r/illegal operation on a directory/, fn ->
        EMLX.load_safetensors(dir)
      end

      assert_raise File.Error, ~r/could not write safetensors to/, fn ->
        EMLX.save_safetensors(Path.join([dir, "missing", "x.safetensors"]), %{"x" => emlx([1])})
      end
    end

    test "a file that is not safetensors raises EMLX.NIFError", %{tmp_dir: dir} do
      path = Path.join(dir, "junk.safetensors")
      File.write!(path, :binary.copy(<<255>>, 64))
      assert_raise EMLX.NIFError, fn -> EMLX.load_safetensors(path) end

      File.write!(path, <<>>)
      assert_raise EMLX.NIFError, fn -> EMLX.load_safetensors(path) end
    end

    test "bad names, tensors and quantized tensors raise ArgumentError", %{tmp_dir: dir} do
      path = Path.join(dir, "bad.safetensors")

      assert_raise ArgumentError, ~r/must be strings/, fn ->
        EMLX.save_safetensors(path, %{1 => emlx([1])})
      end

      assert_raise ArgumentError, ~r/must be a tensor/, fn ->
        EMLX.save_safetensors(path, %{"x" => 1})
      end

      assert_raise ArgumentError, ~r/NUL/, fn ->
        EMLX.save_safetensors(path, %{"a\0b" => emlx([1])})
      end

      qw =
        EMLX.Quantization.quantize(
          emlx(Enum.to_list(1..64) |> List.duplicate(2))
          |> Nx.as_type(:f32)
        )

      assert_raise ArgumentError, ~r/quantized tensor/, fn ->
        EMLX.save_safetensors(path, %{"q" => qw})
      end
    end
  end
end
