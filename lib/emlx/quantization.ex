defmodule EMLX.Quantization.Config do
  @moduledoc """
  The quantization metadata a quantized tensor's `EMLX.Backend` struct
  carries (its `quantization_config` field): the per-group `scales` and
  `biases` (Nx tensors on `EMLX.Backend`, in the dense weight's float type),
  the `group_size` and the `bits` of MLX's affine mode.
  """
  @enforce_keys [:scales, :biases, :group_size, :bits]
  defstruct [:scales, :biases, :group_size, :bits]

  @type t :: %__MODULE__{
          scales: Nx.Tensor.t(),
          biases: Nx.Tensor.t(),
          group_size: 32 | 64 | 128,
          bits: 2 | 3 | 4 | 5 | 6 | 8
        }
end

defmodule EMLX.Quantization do
  @moduledoc """
  Affine group-wise quantization (MLX's `mx::quantize`, `mx::dequantize`
  and `mx::quantized_matmul`, mode `"affine"`).

  Each group of `group_size` consecutive weights along the last axis is
  stored as `bits`-bit integers `q` with one scale and one bias per group:
  the weight is `scale * q + bias`, so `dequantize(quantize(w))` is within
  about half a scale, `(max - min) / (2 ** bits - 1) / 2`, of `w`.

  A quantized weight is an `Nx.Tensor` on `EMLX.Backend` with the dense
  weight's logical shape and an integer type (`{:s, 2}`, `{:s, 4}` or
  `{:s, 8}`: the smallest of them that holds `bits`). Its backend struct
  holds the packed `u32` MLX array and, in `quantization_config`, an
  `EMLX.Quantization.Config` with the scales, biases, group size and bits.

      weight = Nx.iota({512, 4096}, type: :f32, backend: EMLX.Backend)
      qw = EMLX.Quantization.quantize(weight, group_size: 64, bits: 4)
      input = Nx.iota({1, 8, 4096}, type: :f32, backend: EMLX.Backend)
      Nx.dot(input, [2], qw, [1])
      # the same as
      EMLX.Quantization.quantized_matmul(input, qw)

  `Nx.dot/6` with a quantized 2-D weight as its second operand, contracting
  the first operand's last axis against one axis of the weight, without
  batch axes, runs `mx::quantized_matmul` (contracting the weight's axis 1
  is MLX's `transpose: true`, `x @ w^T`; axis 0 is `x @ w`, as
  `Nx.dot(x, qw)`). Any other dot with a quantized operand dequantizes it
  first. Other Nx operations do not understand quantized tensors: call
  `dequantize/1` first.

  Inside `defn`, `Nx.dot/6` with a quantized weight that the function
  receives as an argument runs `mx::quantized_matmul` as well (eagerly
  evaluated, or recorded under `compiler: EMLX`), and `dequantize/2` and
  `quantized_matmul/2` are `deftransform`s over `Nx.runtime_call/4`.
  `quantize/2` and `quantized_tensor/5` run outside `defn` only.

  Bad bits, group sizes, shapes or types raise `ArgumentError`. MLX's affine
  mode takes `bits` 2, 3, 4, 5, 6 or 8 and `group_size` 32, 64 or 128; the
  weight must be f32, f16 or bf16 with at least two axes and a last axis
  divisible by `group_size`.
  """

  import Nx.Defn, only: [deftransform: 2]

  alias EMLX.Quantization.Config
  alias Nx.Tensor, as: T

  @bits [2, 3, 4, 5, 6, 8]
  @group_sizes [32, 64, 128]
  @floats [{:f, 32}, {:f, 16}, {:bf, 16}]

  @doc """
  Quantizes a dense float tensor (at least two axes) along its last axis
  and returns the quantized tensor.

  Options:

    * `:bits` - 2, 3, 4, 5, 6 or 8 (default 4)
    * `:type` - instead of `:bits`: `{:s, 2}`, `{:s, 4}` or `{:s, 8}`
    * `:group_size` - 32, 64 or 128 (default 64); must divide the last axis
  """
  @spec quantize(Nx.Tensor.t(), keyword()) :: Nx.Tensor.t()
  def quantize(%T{} = tensor, opts \\ []) do
    opts = Keyword.validate!(opts, [:bits, :type, group_size: 64])
    bits = bits!(opts)
    group_size = group_size!(opts[:group_size])
    %T{shape: shape, type: type} = tensor

    if expr?(tensor) do
      raise ArgumentError,
            "EMLX.Quantization.quantize/2 runs outside defn: quantize the weight first and pass it in"
    end

    unless type in @floats do
      raise ArgumentError,
            "EMLX.Quantization.quantize/2: the tensor must be f32, f16 or bf16, got #{inspect(type)}"
    end

    rank = tuple_size(shape)

    if rank < 2 do
      raise ArgumentError,
            "EMLX.Quantization.quantize/2: the tensor must have at least two axes, got shape #{inspect(shape)}"
    end

    last = elem(shape, rank - 1)

    if rem(last, group_size) != 0 do
      raise ArgumentError,
            "EMLX.Quantization.quantize/2: the last axis (#{last}) must be divisible by group_size #{group_size}"
    end

    tensor = on_emlx(tensor)
    packed = put_elem(shape, rank - 1, div(last * bits, 32))
    groups = put_elem(shape, rank - 1, div(last, group_size))

    templates =
      {%{tensor | type: {:u, 32}, shape: packed, names: List.duplicate(nil, rank)},
       %{tensor | shape: groups, names: List.duplicate(nil, rank)},
       %{tensor | shape: groups, names: List.duplicate(nil, rank)}}

    {w_q, scales, biases} =
      EMLX.Backend.run_quantization(templates, :quantize, [tensor, group_size, bits])

    config = %Config{scales: scales, biases: biases, group_size: group_size, bits: bits}
    %{tensor | type: storage_type(bits), data: %{w_q.data | quantization_config: config}}
  end

  @doc "The same as `quantize/2` (the name some EMLX versions use)."
  @spec from_dense(Nx.Tensor.t(), keyword()) :: Nx.Tensor.t()
  def from_dense(tensor, opts \\ []), do: quantize(tensor, opts)

  @doc """
  The dense float tensor (the quantized tensor's shape) of a quantized
  tensor: `mx::dequantize`.

  Eagerly the result has the scales' type (the type of the weight that was
  quantized). Inside `defn` (a `deftransform` over `Nx.runtime_call/4`)
  that type is not known when tracing: the result has type `opts[:type]`
  (default `:f32`). Given eagerly, `:type` casts the result as well.
  """
  @spec dequantize(Nx.Tensor.t(), keyword()) :: Nx.Tensor.t()
  deftransform dequantize(qw, opts \\ []) do
    opts = Keyword.validate!(opts, [:type])

    if expr?(qw) do
      type = Nx.Type.normalize!(opts[:type] || :f32)

      Nx.runtime_call(Nx.template(qw.shape, type), qw, fn qw, _ ->
        qw |> dequantize_now() |> Nx.as_type(type)
      end)
    else
      dq = dequantize_now(qw)
      if opts[:type], do: Nx.as_type(dq, opts[:type]), else: dq
    end
  end

  defp dequantize_now(%T{} = qw) do
    %Config{} = config = config!(qw, "dequantize/1")
    out = %{qw | type: config.scales.type, data: nil}
    args = [packed(qw), config.scales, config.biases, config.group_size, config.bits]
    EMLX.Backend.run_quantization(out, :dequantize, args)
  end

  @doc """
  `activation @ transpose(dequantize(qw))` with `mx::quantized_matmul`:
  `qw` is a quantized 2-D weight {out_features, in_features} and the
  result has shape {batch..., out_features} and the activation's float
  type. Raises `ArgumentError` if both arguments are quantized.

  A `deftransform`: inside `defn` it runs through `Nx.runtime_call/4`.
  """
  @spec quantized_matmul(Nx.Tensor.t(), Nx.Tensor.t()) :: Nx.Tensor.t()
  deftransform quantized_matmul(activation, qw) do
    out = matmul_template!(activation, qw)

    if expr?(activation) or expr?(qw) do
      Nx.runtime_call(out, {activation, qw}, fn {x, qw}, _ -> quantized_matmul_now(out, x, qw) end)
    else
      quantized_matmul_now(out, activation, qw)
    end
  end

  defp quantized_matmul_now(out, activation, qw) do
    config!(qw, "quantized_matmul/2")
    matmul(%{out | data: nil}, on_emlx(activation), qw, true)
  end

  # The result's template, from the shapes and the activation's type.
  defp matmul_template!(%T{shape: x_shape, type: x_type} = x, %T{shape: w_shape}) do
    name = "quantized_matmul/2"

    if quantized?(x) do
      raise ArgumentError, "EMLX.Quantization.#{name}: the activation must not be quantized"
    end

    unless x_type in @floats do
      raise ArgumentError,
            "EMLX.Quantization.#{name}: the activation must be f32, f16 or bf16, got #{inspect(x_type)}"
    end

    case w_shape do
      {n, k} when tuple_size(x_shape) >= 1 and elem(x_shape, tuple_size(x_shape) - 1) == k ->
        Nx.template(put_elem(x_shape, tuple_size(x_shape) - 1, n), x_type)

      shape ->
        raise ArgumentError,
              "EMLX.Quantization.#{name}: expected a 2-D weight {out, in} and an activation " <>
                "{..., in}, got #{inspect(shape)} and #{inspect(x_shape)}"
    end
  end

  defp expr?(%T{data: %Nx.Defn.Expr{}}), do: true
  defp expr?(_), do: false

  @doc "Whether `tensor` is a quantized tensor (its backend carries an `EMLX.Quantization.Config`)."
  @spec quantized?(term()) :: boolean()
  def quantized?(%T{data: %EMLX.Backend{quantization_config: %Config{}}}), do: true
  def quantized?(_), do: false

  @doc """
  A quantized tensor from packed weights, scales and biases already on the
  device (device refs `{device, ref}` or `EMLX.Backend` tensors, as
  `EMLX.quantize/3` returns them), for the dense shape `original_shape`.

  Options: `:bits` or `:type` (default 4 bits), `:group_size` (default 64).
  """
  @spec quantized_tensor(term(), term(), term(), tuple(), keyword()) :: Nx.Tensor.t()
  def quantized_tensor(weight, scales, biases, original_shape, opts \\ [])
      when is_tuple(original_shape) do
    opts = Keyword.validate!(opts, [:bits, :type, group_size: 64])
    bits = bits!(opts)
    group_size = group_size!(opts[:group_size])
    [w_q, scales, biases] = Enum.map([weight, scales, biases], &to_tensor/1)
    rank = tuple_size(original_shape)

    expected_packed =
      rank >= 2 and
        put_elem(original_shape, rank - 1, div(elem(original_shape, rank - 1) * bits, 32))

    expected_groups =
      rank >= 2 and
        put_elem(original_shape, rank - 1, div(elem(original_shape, rank - 1), group_size))

    unless w_q.type == {:u, 32} and w_q.shape == expected_packed and
             scales.shape == expected_groups and biases.shape == expected_groups and
             scales.type in @floats and biases.type in @floats do
      raise ArgumentError,
            "EMLX.Quantization.quantized_tensor/5: packed weights #{inspect(w_q.type)}#{inspect(w_q.shape)}, " <>
              "scales #{inspect(scales.type)}#{inspect(scales.shape)} and biases #{inspect(biases.shape)} " <>
              "do not match shape #{inspect(original_shape)} with group_size #{group_size} and bits #{bits}"
    end

    config = %Config{scales: scales, biases: biases, group_size: group_size, bits: bits}

    %{
      w_q
      | shape: original_shape,
        type: storage_type(bits),
        names: List.duplicate(nil, rank),
        data: %{w_q.data | quantization_config: config}
    }
  end

  @doc "mlx-lm's packed layout as quantized tensors: `EMLX.Quantization.Packed.from_packed/2`."
  defdelegate from_packed(tensors, quantization), to: EMLX.Quantization.Packed

  @doc "The packed weight, scales, biases, bits and group size of a quantized tensor: `EMLX.Quantization.Packed.parts/1`."
  defdelegate parts(qw), to: EMLX.Quantization.Packed

  @doc false
  # EMLX.Backend.dot/7 with a quantized operand.
  def dot(out, a, contract_a, batch_a, b, contract_b, batch_b) do
    a = if quantized?(a), do: dequantize(a), else: a
    rank_a = tuple_size(a.shape)

    transpose =
      case contract_b do
        [1] -> true
        [0] -> false
        _ -> nil
      end

    if quantized?(b) and tuple_size(b.shape) == 2 and batch_a == [] and batch_b == [] and
         contract_a == [rank_a - 1] and transpose != nil and a.type in @floats and
         out.type in @floats do
      matmul(out, a, b, transpose)
    else
      b = if quantized?(b), do: dequantize(b), else: b
      EMLX.Backend.dot(out, a, contract_a, batch_a, b, contract_b, batch_b)
    end
  end

  defp matmul(out, x, qw, transpose) do
    %Config{} = c = qw.data.quantization_config
    args = [x, packed(qw), c.scales, c.biases, transpose, c.group_size, c.bits]
    EMLX.Backend.run_quantization(out, :quantized_matmul, args, :out)
  end

  @doc false
  # EMLX.Backend.inspect/2 of a quantized tensor: its config, not its data.
  def inspect_config(%Config{} = c) do
    Inspect.Algebra.string(
      "EMLX.Quantization: #{c.bits} bits, group_size #{c.group_size}, " <>
        "#{Nx.Type.to_string(c.scales.type)} scales"
    )
  end

  @doc false
  def no_dense!(%T{}, what) do
    raise ArgumentError,
          "EMLX.Backend: #{what} of a quantized tensor: use EMLX.Quantization.dequantize/1 first"
  end

  @doc false
  # EMLX.Backend.backend_copy/3 of a quantized tensor: a new handle on the
  # same device; anything else needs the dense tensor.
  def copy(%T{data: data} = qw, backend, opts) do
    if backend == EMLX.Backend and Keyword.get(opts, :device, data.device) == data.device do
      %T{data: copied} = EMLX.Backend.backend_copy(packed(qw), EMLX.Backend, [])
      %{qw | data: %{copied | quantization_config: data.quantization_config}}
    else
      no_dense!(qw, "backend_copy to #{inspect(backend)} #{inspect(opts)}")
    end
  end

  # The packed u32 array as a tensor of its own shape.
  defp packed(%T{shape: shape, data: data} = qw) do
    %Config{bits: bits} = data.quantization_config
    rank = tuple_size(shape)
    packed = put_elem(shape, rank - 1, div(elem(shape, rank - 1) * bits, 32))

    %{
      qw
      | shape: packed,
        type: {:u, 32},
        names: List.duplicate(nil, rank),
        data: %{data | quantization_config: nil}
    }
  end

  defp config!(%T{} = t, name) do
    if quantized?(t) do
      t.data.quantization_config
    else
      raise ArgumentError,
            "EMLX.Quantization.#{name}: expected a quantized tensor (from EMLX.Quantization.quantize/2)"
    end
  end

  @doc false
  # The checks of EMLX.quantize/3 and the other device-ref functions.
  def check_config!(group_size, bits) do
    bits!(bits: bits)
    group_size!(group_size)
    :ok
  end

  defp bits!(opts) do
    bits =
      case {opts[:bits], opts[:type]} do
        {nil, nil} ->
          4

        {bits, nil} ->
          bits

        {nil, {:s, n}} when n in [2, 4, 8] ->
          n

        {nil, type} ->
          raise ArgumentError,
                "EMLX.Quantization: :type must be {:s, 2}, {:s, 4} or {:s, 8}, got #{inspect(type)}"

        {_, _} ->
          raise ArgumentError, "EMLX.Quantization: give :bits or :type, not both"
      end

    unless bits in @bits do
      raise ArgumentError,
            "EMLX.Quantization: bits must be one of #{inspect(@bits)}, got #{inspect(bits)}"
    end

    bits
  end

  defp group_size!(group_size) do
    unless group_size in @group_sizes do
      raise ArgumentError,
            "EMLX.Quantization: group_size must be one of #{inspect(@group_sizes)}, got #{inspect(group_size)}"
    end

    group_size
  end

  defp storage_type(bits) when bits <= 2, do: {:s, 2}
  defp storage_type(bits) when bits <= 4, do: {:s, 4}
  defp storage_type(_bits), do: {:s, 8}

  defp on_emlx(%T{data: %EMLX.Backend{}} = t), do: t
  defp on_emlx(%T{} = t), do: Nx.backend_copy(t, EMLX.Backend)

  defp to_tensor(%T{} = t), do: on_emlx(t)

  defp to_tensor({device, ref} = device_ref) when is_atom(device) and is_reference(ref),
    do: EMLX.Backend.to_nx(device_ref)
end
