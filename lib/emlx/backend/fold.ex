defmodule EMLX.Backend.Fold do
  @moduledoc false
  # Reductions with an arbitrary function (`Nx.reduce/4`,
  # `Nx.window_reduce/5`) for EMLX.Backend, composed from Nx ops that run
  # on EMLX: the values to reduce are laid along a last axis, folded
  # pairwise (a tree of log2(n) steps of element-wise ops on MLX), then the
  # initial accumulator is folded in. The function must be associative and
  # commutative, as Nx requires for compiled backends.

  alias Nx.Tensor, as: T

  @doc "`Nx.Backend.reduce/5`."
  def reduce(%T{type: type, shape: out_shape} = out, %T{shape: shape} = tensor, acc, opts, fun) do
    axes = opts[:axes] || Nx.axes(shape)
    kept = Nx.axes(shape) -- axes
    kept_shape = Enum.map(kept, &elem(shape, &1))

    flat =
      tensor
      |> Nx.transpose(axes: kept ++ axes)
      |> Nx.reshape(List.to_tuple(kept_shape ++ [Enum.reduce(axes, 1, &(elem(shape, &1) * &2))]))

    flat
    |> fold_last_axis(acc, List.to_tuple(kept_shape), fun)
    |> Nx.as_type(type)
    |> Nx.reshape(out_shape)
    |> then(&%{out | data: &1.data})
  end

  @doc """
  The template of the windows of `Nx.Backend.window_reduce/6` for its
  output template `out`: one window per output element, along a last axis.
  """
  def windows_template(%T{shape: shape} = out, %T{type: type}, window) do
    windows_shape = List.to_tuple(Tuple.to_list(shape) ++ [Tuple.product(window)])

    %{
      out
      | shape: windows_shape,
        type: type,
        names: List.duplicate(nil, tuple_size(windows_shape))
    }
  end

  @doc "`Nx.Backend.window_reduce/6` given the `windows` (see `windows_template/3`)."
  def window_reduce(%T{type: type} = out, windows, acc, fun) do
    windows
    |> fold_last_axis(acc, out.shape, fun)
    |> Nx.as_type(type)
    |> then(&%{out | data: &1.data})
  end

  defp fold_last_axis(%T{shape: shape} = t, acc, result_shape, fun) do
    last = tuple_size(shape) - 1

    case elem(shape, last) do
      0 ->
        Nx.broadcast(acc, result_shape)

      _ ->
        t |> tree_fold(last, fun) |> Nx.squeeze(axes: [last]) |> fun.(acc)
    end
  end

  defp tree_fold(%T{shape: shape} = t, axis, fun) do
    case elem(shape, axis) do
      1 ->
        t

      n ->
        half = div(n, 2)
        a = Nx.slice_along_axis(t, 0, half, axis: axis)
        b = Nx.slice_along_axis(t, half, half, axis: axis)
        folded = fun.(a, b)

        folded =
          if rem(n, 2) == 1,
            do:
              Nx.concatenate([folded, Nx.slice_along_axis(t, n - 1, 1, axis: axis)], axis: axis),
            else: folded

        tree_fold(folded, axis, fun)
    end
  end
end
