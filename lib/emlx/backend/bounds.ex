defmodule EMLX.Backend.Bounds do
  @moduledoc false
  # Checks of values the host already has, made as Nx.BinaryBackend makes
  # them and with its messages: out-of-bounds indices of gather and the
  # indexed ops, negative shift amounts. An index or shift tensor is read
  # when the backend kept its values (a literal such as
  # `Nx.tensor([[3, -10]])` made from a binary, of at most @max values; an
  # integer constant, a number operand as in `Nx.left_shift(t, -1)`), or
  # when it is computed and readable in place (EMLX.NIF.host_ints/2; on the
  # GPU up to 8 bytes) and has at most @max values; EMLX never evaluates or
  # waits to check. Other
  # tensors (computed lazily, or in a compiled program) are not checked, as
  # under EXLA: EMLX clamps their indices into range before MLX's gather.

  alias Nx.Tensor, as: T

  @max 4096

  @doc """
  Keeps `binary`, the bytes `tensor` (an integer tensor of at most 4,096
  values) was made from, in its data for the checks; returns `tensor`.
  """
  def keep_host(%T{type: {kind, bits}, data: data} = tensor, binary)
      when kind in [:s, :u] and byte_size(binary) * 8 <= @max * bits do
    # (a copy when the bytes are a slice of a larger binary, which they would keep)
    bin =
      if :binary.referenced_byte_size(binary) > byte_size(binary),
        do: :binary.copy(binary),
        else: binary

    %{tensor | data: %{data | host: bin}}
  end

  def keep_host(tensor, _binary), do: tensor

  @doc """
  Raises `ArgumentError` when an index tuple (the last axis of `indices`)
  is out of the bounds of `tensor`'s `axes` (nil: its leading axes), in
  the shape Nx.BinaryBackend reports: `tensor`'s with `axes` first.
  Returns `indices`.
  """
  def indices!(%T{shape: shape}, %T{shape: index_shape} = indices, axes) do
    k = elem(index_shape, tuple_size(index_shape) - 1)

    with true <- k > 0, [_ | _] = values <- host_ints(indices) do
      shape = indexed_shape(shape, axes)
      dims = shape |> Tuple.to_list() |> Enum.take(k)
      Enum.each(Enum.chunk_every(values, k), &tuple!(&1, dims, shape))
    end

    indices
  end

  @doc "Raises `ArgumentError` for a negative amount of a left or right shift; returns `amount`."
  def shift!(direction, %T{} = amount) do
    with [_ | _] = values <- host_ints(amount),
         v when is_integer(v) <- Enum.find(values, &(&1 < 0)) do
      raise ArgumentError, "cannot #{direction} shift by #{v}"
    end

    amount
  end

  defp tuple!(tuple, dims, shape) do
    Enum.zip(tuple, dims)
    |> Enum.with_index()
    |> Enum.each(fn {{i, d}, axis} ->
      if i < 0 or i >= d do
        raise ArgumentError,
              "index #{i} is out of bounds for axis #{axis} in shape #{inspect(shape)}"
      end
    end)
  end

  defp indexed_shape(shape, nil), do: shape

  defp indexed_shape(shape, axes) do
    all = Nx.axes(shape)

    if List.starts_with?(all, axes),
      do: shape,
      else: List.to_tuple(Enum.map(axes ++ (all -- axes), &elem(shape, &1)))
  end

  defp host_ints(%T{data: %EMLX.Backend{scalar: n}}) when is_integer(n), do: [n]

  defp host_ints(%T{type: {:s, size}, data: %EMLX.Backend{host: bin}}) when is_binary(bin),
    do: for(<<v::size(size)-signed-native <- bin>>, do: v)

  defp host_ints(%T{type: {:u, size}, data: %EMLX.Backend{host: bin}}) when is_binary(bin),
    do: for(<<v::size(size)-unsigned-native <- bin>>, do: v)

  # (the NIF reads into a buffer of the size it is given: the tensor's own)
  defp host_ints(%T{type: {kind, _}, shape: shape, data: %EMLX.Backend{ref: ref}})
       when is_reference(ref) and kind in [:s, :u] do
    size = Tuple.product(shape)
    if size <= @max, do: EMLX.NIF.host_ints(ref, size)
  end

  defp host_ints(_), do: nil
end
