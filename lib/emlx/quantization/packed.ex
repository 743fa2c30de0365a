defmodule EMLX.Quantization.Packed do
  @moduledoc """
  Quantized weights as their three plain tensors, the way MLX and mlx-lm
  store them: `weight` (u32, `32 / bits` values packed per word along the
  last axis), `scales` and `biases` (one per group of `group_size` values).

  `from_packed/2` turns such a layout, as read from an mlx-lm model folder,
  into `EMLX.Quantization` quantized tensors; `parts/1` takes one apart
  again. `matmul/5` and `dequantize/4` run MLX's kernels on the three
  tensors directly: inside `defn` they are plain tensor arguments, so a
  `compiler: EMLX` plan over them is cached like any other (a quantized
  tensor argument is recorded anew on each call). Bits and group size
  follow from the shapes unless given.

  `EMLX.Quantization` delegates to these functions.
  """

  import Nx.Defn, only: [deftransform: 2]

  alias EMLX.Fast.Block
  alias EMLX.Quantization
  alias Nx.Tensor, as: T

  @doc """
  Replaces each `prefix.weight` that has `prefix.scales` and
  `prefix.biases` beside it in `tensors` (a map of name to tensor, as
  `EMLX.load_safetensors/2` returns) with an `EMLX.Quantization` quantized
  tensor, and drops the scales and biases. Every other entry stays as it is.

  `quantization` is config.json's `"quantization"` object as mlx-lm writes
  it (`%{"bits" => 4, "group_size" => 64, "mode" => "affine"}`, with
  per-layer entries `"prefix" => %{"bits" => ..., "group_size" => ...}`
  where a layer differs), or a keyword list `[bits: 4, group_size: 64]`.
  Only MLX's `"affine"` mode is supported.
  """
  @spec from_packed(%{String.t() => T.t()}, map() | keyword()) :: %{String.t() => T.t()}
  def from_packed(tensors, quantization) when is_map(tensors) do
    defaults = config!(quantization, "the quantization")

    Enum.reduce(tensors, tensors, fn {name, weight}, acc ->
      with prefix when prefix != nil <- weight_prefix(name),
           %{} = scales <- tensors[prefix <> ".scales"],
           %{} = biases <- tensors[prefix <> ".biases"] do
        {bits, group_size} = layer_config(quantization, prefix, defaults)
        packed_cols = elem(weight.shape, tuple_size(weight.shape) - 1)
        shape = put_elem(weight.shape, tuple_size(weight.shape) - 1, div(packed_cols * 32, bits))

        qw =
          Quantization.quantized_tensor(weight, scales, biases, shape,
            bits: bits,
            group_size: group_size
          )

        acc
        |> Map.put(name, qw)
        |> Map.drop([prefix <> ".scales", prefix <> ".biases"])
      else
        _ -> acc
      end
    end)
  end

  defp weight_prefix(name) do
    if String.ends_with?(name, ".weight"), do: String.replace_suffix(name, ".weight", "")
  end

  defp layer_config(quantization, prefix, defaults) when is_map(quantization) do
    case quantization do
      %{^prefix => %{} = layer} -> config!(layer, "the quantization of #{prefix}", defaults)
      _ -> defaults
    end
  end

  defp layer_config(_quantization, _prefix, defaults), do: defaults

  defp config!(config, what, defaults \\ {nil, nil})

  defp config!(config, what, defaults) when is_list(config) do
    config!(Map.new(config, fn {k, v} -> {Atom.to_string(k), v} end), what, defaults)
  end

  defp config!(config, what, {bits, group_size}) when is_map(config) do
    mode = Map.get(config, "mode", "affine")

    if mode != "affine" do
      raise ArgumentError,
            "EMLX.Quantization.from_packed/2: #{what} uses mode #{inspect(mode)}; only \"affine\" is supported"
    end

    bits = Map.get(config, "bits", bits)
    group_size = Map.get(config, "group_size", group_size)
    Quantization.check_config!(group_size, bits)
    {bits, group_size}
  end

  @doc """
  The parts of a quantized tensor: `%{weight: packed, scales: scales,
  biases: biases, bits: bits, group_size: group_size}` (the tensors on
  `EMLX.Backend`).
  """
  @spec parts(T.t()) :: map()
  def parts(%T{data: %EMLX.Backend{quantization_config: %Quantization.Config{} = c}} = qw) do
    rank = tuple_size(qw.shape)
    packed = put_elem(qw.shape, rank - 1, div(elem(qw.shape, rank - 1) * c.bits, 32))

    weight = %{
      qw
      | shape: packed,
        type: {:u, 32},
        names: List.duplicate(nil, rank),
        data: %{qw.data | quantization_config: nil}
    }

    %{weight: weight, scales: c.scales, biases: c.biases, bits: c.bits, group_size: c.group_size}
  end

  def parts(other) do
    raise ArgumentError,
          "EMLX.Quantization.parts/1: expected a quantized tensor, got: #{inspect(other)}"
  end

  @doc """
  `x @ transpose(w)` for a packed 2-D weight `w` {out, in * bits / 32} with
  `scales` and `biases` {out, in / group_size} (`mx::quantized_matmul`,
  transposed, MLX's `nn.QuantizedLinear`). The result is
  {..., out}, of the float type of `x` and `scales` combined.

  Options: `:bits`, `:group_size` (default: from the shapes).
  """
  deftransform matmul(x, w, scales, biases, opts \\ []) do
    {bits, group_size} = shapes!(x, w, scales, biases, opts, "matmul/5")
    {n, _} = w.shape
    out = Nx.template(put_elem(x.shape, tuple_size(x.shape) - 1, n), merge(x, scales))
    layout = Enum.map(0..3, &{:arg, &1}) ++ [{:value, true}, {:value, group_size}, {:value, bits}]
    struct = %Block{name: "matmul/5", op: :quantized_matmul, layout: layout}

    Nx.block(struct, [x, w, scales, biases], out, fn _, x, w, s, b ->
      Nx.dot(Nx.as_type(x, out.type), [-1], reference(w, s, b, group_size, bits, out.type), [1])
    end)
  end

  @doc """
  The dense weight of packed `w` {..., k * bits / 32} with `scales` and
  `biases` {..., k / group_size} (`mx::dequantize`): {..., k}, of the scales'
  type. Options: `:bits`, `:group_size` (default: `:group_size` 64 and the
  bits from the shapes).
  """
  deftransform dequantize(w, scales, biases, opts \\ []) do
    opts = Keyword.validate!(opts, [:bits, :group_size])
    group_size = opts[:group_size] || 64
    packed_cols = elem(w.shape, tuple_size(w.shape) - 1)
    cols = elem(scales.shape, tuple_size(scales.shape) - 1) * group_size
    bits = opts[:bits] || div(packed_cols * 32, max(cols, 1))
    Quantization.check_config!(group_size, bits)

    unless w.type == {:u, 32} and scales.shape == biases.shape and packed_cols * 32 == cols * bits do
      raise ArgumentError,
            "EMLX.Quantization.dequantize/4: packed weights #{inspect(w.type)}#{inspect(w.shape)} do " <>
              "not match scales #{inspect(scales.shape)} and biases #{inspect(biases.shape)} " <>
              "for group_size #{group_size} and bits #{bits}"
    end

    out = Nx.template(put_elem(w.shape, tuple_size(w.shape) - 1, cols), scales.type)
    layout = Enum.map(0..2, &{:arg, &1}) ++ [{:value, group_size}, {:value, bits}]
    struct = %Block{name: "dequantize/4", op: :dequantize, layout: layout}

    Nx.block(struct, [w, scales, biases], out, fn _, w, s, b ->
      reference(w, s, b, group_size, bits, out.type)
    end)
  end

  # bits and group size of a transposed quantized matmul, checked.
  defp shapes!(x, w, scales, biases, opts, name) do
    opts = Keyword.validate!(opts, [:bits, :group_size])

    with {:ok, k} <- last_axis(x),
         {n, packed_cols} <- w.shape,
         {^n, groups} when groups > 0 <- scales.shape,
         true <- biases.shape == scales.shape and w.type == {:u, 32} do
      group_size = opts[:group_size] || div(k, groups)
      bits = opts[:bits] || div(packed_cols * 32, k)
      Quantization.check_config!(group_size, bits)

      if packed_cols * 32 != k * bits or groups * group_size != k,
        do: bad_shapes!(x, w, scales, name)

      {bits, group_size}
    else
      _ -> bad_shapes!(x, w, scales, name)
    end
  end

  defp last_axis(%T{shape: shape}) when tuple_size(shape) >= 1,
    do: {:ok, elem(shape, tuple_size(shape) - 1)}

  defp last_axis(_), do: :error

  defp bad_shapes!(x, w, scales, name) do
    raise ArgumentError,
          "EMLX.Quantization.#{name}: expected x {..., in}, packed u32 weights {out, in * bits / 32} " <>
            "and scales, biases {out, in / group_size}, got #{inspect(x.shape)}, " <>
            "#{inspect(w.type)}#{inspect(w.shape)} and #{inspect(scales.shape)}"
  end

  defp merge(%T{type: a}, %T{type: b}), do: Nx.Type.merge(a, b)

  # The plain-Nx dequantization: the words as one little-endian bit stream,
  # `bits` bits a value, then `scale * q + bias` per group.
  defp reference(w, scales, biases, group_size, bits, type) do
    lead = w.shape |> Tuple.to_list() |> Enum.drop(-1)
    cols = div(elem(w.shape, tuple_size(w.shape) - 1) * 32, bits)
    shifts = Nx.iota({32}, type: {:u, 32})

    w
    |> Nx.new_axis(-1)
    |> Nx.right_shift(shifts)
    |> Nx.bitwise_and(1)
    |> Nx.reshape(List.to_tuple(lead ++ [cols, bits]))
    |> Nx.left_shift(Nx.iota({bits}, type: {:u, 32}))
    |> Nx.sum(axes: [-1])
    |> Nx.as_type(type)
    |> Nx.reshape(List.to_tuple(lead ++ [div(cols, group_size), group_size]))
    |> Nx.multiply(Nx.new_axis(Nx.as_type(scales, type), -1))
    |> Nx.add(Nx.new_axis(Nx.as_type(biases, type), -1))
    |> Nx.reshape(List.to_tuple(lead ++ [cols]))
  end
end
