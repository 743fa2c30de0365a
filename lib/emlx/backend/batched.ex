defmodule EMLX.Backend.Batched do
  @moduledoc false
  # EMLX.Backend.to_batched/3: the batches of the first axis, each a slice
  # of the tensor; with `leftover: :repeat` the last batch wraps around to
  # the start (a slice of the tail and one of the head, concatenated).

  alias Nx.Tensor, as: T

  def to_batched(%T{shape: out_shape} = out, %T{shape: shape} = tensor, opts) do
    leftover = opts[:leftover]
    batch_size = elem(out_shape, 0)
    axis_size = elem(shape, 0)
    remainder = rem(axis_size, batch_size)
    full = div(axis_size, batch_size)
    rank = tuple_size(shape)
    zeros = List.duplicate(0, rank - 1)
    ones = List.duplicate(1, rank)
    rest = tl(Tuple.to_list(out_shape))

    range = if remainder != 0 and leftover == :repeat, do: 0..full, else: 0..(full - 1)//1

    Stream.map(range, fn
      ^full ->
        tail = %{out | shape: List.to_tuple([remainder | rest])}
        head = %{out | shape: List.to_tuple([batch_size - remainder | rest])}

        EMLX.Backend.concatenate(
          out,
          [
            EMLX.Backend.slice(
              tail,
              tensor,
              [full * batch_size | zeros],
              [remainder | rest],
              ones
            ),
            EMLX.Backend.slice(head, tensor, [0 | zeros], [batch_size - remainder | rest], ones)
          ],
          0
        )

      i ->
        EMLX.Backend.slice(out, tensor, [i * batch_size | zeros], Tuple.to_list(out_shape), ones)
    end)
  end
end
