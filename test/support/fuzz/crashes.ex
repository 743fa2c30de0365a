defmodule EMLX.Fuzz.Crashes do
  @moduledoc false

  import EMLX.Fuzz.Values
  alias EMLX.NIF

  # Crash classes. Each of these killed the VM when this suite was written;
  # each is fixed since in the shim by a check that raises instead. The storm
  # keeps generating them (see crash_class/2) and counts them as
  # "formerly crashing". A class that crashes again goes into @known_crashes
  # (id => reproduction), which the storm then skips (EMLX_FUZZ_KNOWN=run
  # runs them anyway). The reproductions, given
  #   q = EMLX.Application.default_worker(:cpu)
  #   m = EMLX.Backend.from_nx(Nx.iota({2, 3}, backend: EMLX.Backend)) |> elem(1)
  #   a = EMLX.Backend.from_nx(Nx.tensor([1.0, 2.0, 3.0], backend: EMLX.Backend)) |> elem(1)
  #   i = EMLX.Backend.from_nx(Nx.tensor(0, backend: EMLX.Backend)) |> elem(1)
  #   e = EMLX.Worker.from_binary(q, <<>>, {0, 0}, {:f, 32})
  #   read = &(EMLX.NIF.to_binary(q, &1, 64) |> EMLX.Worker.await())
  #
  #   iota_axis_out_of_range: EMLX.Worker.run_op(q, :iota, [{2, 3}, 7, {:f, 32}], nil) |> read.()
  #     aborted (SmallVector::operator[] assertion: emlx_iota wrote one[axis])
  #   slice_lists_shorter_than_starts: EMLX.Worker.run_op(q, :slice, [m, [0, 0], [1], [1, 1]], nil)
  #     aborted (emlx_slice read lengths[i] for each start)
  #   slice_zero_stride: EMLX.Worker.run_op(q, :slice, [m, [0, 0], [1, 1], [0, 1]], nil) |> read.()
  #     SIGFPE (division by the stride in mx::slice); also :dynamic_slice
  #   dynamic_slice_lists_shorter_than_rank:
  #     EMLX.Worker.run_op(q, :dynamic_slice, [m, [i, i], [1], [1, 1]], nil) aborted
  #   put_slice_update_rank_mismatch: EMLX.Worker.run_op(q, :put_slice, [m, a, [i, i]], nil)
  #     aborted; an update of higher rank (x = s32[3], u = s32[2][1], starts [i]) segfaulted
  #     in mx::slice_update (the worker jumped to address 0)
  #   linalg_empty_matrix: EMLX.Worker.run_op(q, :lu, [e], nil) |> hd() |> read.() SIGFPE;
  #     also :solve of [e, e], :triangular_solve of [e, e, true, true, false], and {3, 0}
  #   scatter_into_empty: x = f32[3][0], z = s32[0]:
  #     EMLX.Worker.run_op(q, :indexed_add, [x, z, x, []], nil) |> read.() SIGFPE; also :indexed_put
  #   window_zero_stride: EMLX.Worker.run_op(q, :window_reduce, [a, 0, [2], [0], [0], [0], [1]], nil)
  #     |> read.() SIGFPE (window_view divided by the stride); also :windows, :window_scatter
  #   window_negative_dilation:
  #     EMLX.Worker.run_op(q, :window_reduce, [a, 0, [2], [1], [0], [0], [-100000000]], nil)
  #     |> read.() segfaulted (mx::as_strided view reading before the buffer; -1 silently
  #     returned out-of-bounds data)
  #   window_empty_hang: b = bf16 [[1, -1], [0.5, 8]]:
  #     EMLX.Worker.run_op(q, :window_reduce, [b, 0, {0, 0}, {1, 1}, [3, 3], [3, 2], [1, 1]], nil)
  #     |> read.() never returned (MLX's bf16 sum over empty window axes spun in nd_loop; the
  #     queue was stuck for good and the VM could not stop)
  #   rank_over_32: EMLX.Worker.run_op(q, :full, [1, List.duplicate(1, 40), {:f, 32}], nil)
  #     |> EMLX.Worker.info() segfaulted, as did Nx.iota(Tuple.duplicate(1, 40), backend:
  #     EMLX.Backend) |> EMLX.Backend.from_nx() |> EMLX.shape() (the shape was written into a
  #     32-entry stack buffer; 33 dimensions came back truncated, and AddressSanitizer
  #     reported a stack-buffer-overflow in emlx_arr_shape)
  #   compiled_empty_gpu (on :gpu only): with q on the GPU, x = u8[2][2], e = f32[3][0],
  #     p = EMLX.NIF.program_new(q, [{:erf, [1], {:u, 16}}], 2, [2, 0]),
  #     EMLX.NIF.program_run(q, p, [x, e], true) |> EMLX.Worker.await() SIGFPE (MLX's CUDA
  #     Compiled::eval_gpu divides by the block size of a launch over no elements; the
  #     shim now replays such a run plainly)
  #
  # Never in the storm (it evaluates no array too big for memory): a failed
  # MLX allocation segfaulted in MLX's CPU copy kernel instead of raising, e.g.
  #   Nx.broadcast(Nx.tensor(1.0, backend: EMLX.Backend), {2_147_483_647, 2_147_483_647})
  #   |> Nx.to_binary(limit: 1)
  # and :triangular_solve evaluates its input at once (its singularity check).
  @known_crashes %{}

  @doc "The known crashes: id => reproduction."
  def known, do: @known_crashes

  @shape_ops [:full, :iota, :eye, :reshape, :broadcast_to, :broadcast]

  ## Crash classes

  @doc "The id of the known crash a call would hit (one still listed in @known_crashes), or nil."
  def known_crash(st, call) do
    id = crash_class(st, call)
    if id && Map.has_key?(@known_crashes, id), do: id
  end

  @doc "The class of formerly crashing call this is, or nil."
  def crash_class(st, {mod, fun, args}) do
    case {mod, fun, args} do
      {NIF, :op, [_, name, args, _]} when is_list(args) ->
        if name in @shape_ops and long_list?(args),
          do: :rank_over_32,
          else: known_op_crash(st, name, args)

      {EMLX, :op, [name, args | _]} when is_list(args) ->
        if name in @shape_ops and long_list?(args),
          do: :rank_over_32,
          else: known_op_crash(st, name, args)

      {EMLX.Fuzz.Gen, :program, [_, instrs | rest]} when is_list(instrs) ->
        Enum.find_value(int_list(instrs), fn
          {name, args, _} when is_list(args) ->
            crash_class(st, {NIF, :op, [nil, name, args, nil]})

          _ ->
            nil
        end) || compiled_empty(st, rest)

      {EMLX, fun, args} when fun in [:reshape, :broadcast_to, :full, :ones] ->
        if long_list?(args), do: :rank_over_32

      {Nx, fun, args} when fun in [:reshape, :broadcast, :iota, :eye] ->
        if long_list?(args), do: :rank_over_32

      _ ->
        nil
    end
  end

  # A compiled run over an empty input (its elementwise ops fuse into a
  # kernel with no elements).
  defp compiled_empty(st, [_, _, _, inputs, true]) when is_list(inputs) do
    if Enum.any?(inputs, &(is_tuple(shape_in(st, &1)) and 0 in Tuple.to_list(shape_in(st, &1)))),
      do: :compiled_empty_gpu
  end

  defp compiled_empty(_, _), do: nil

  # A shape of more than EMLX_MAX_DIMS (32) dimensions, short enough for
  # the codec (at most 4096 integers).
  defp long_list?(args) do
    Enum.any?(int_list(args), fn arg ->
      n = length(int_list(arg))
      n > 32 and n <= 4096
    end)
  end

  defp known_op_crash(_st, :iota, [shape, axis, _]) do
    if is_integer(axis) and axis >= 0 and axis >= length(int_list(shape)),
      do: :iota_axis_out_of_range
  end

  defp known_op_crash(_st, :slice, [_, starts, lengths, strides]) do
    n = length(int_list(starts))
    slice_crash(n, lengths, strides, :slice_lists_shorter_than_starts)
  end

  # The shim checks that there is one start per dimension; shorter
  # lengths or strides are then read out of bounds. Pending pool arrays
  # have no known shape, so the rules go by the lists alone where they can.
  defp known_op_crash(_st, :dynamic_slice, [_, starts, lengths, strides]) do
    n = if is_list(starts), do: length(int_list(starts)), else: 0
    slice_crash(n, lengths, strides, :dynamic_slice_lists_shorter_than_rank)
  end

  defp known_op_crash(st, :put_slice, [x, update, starts]) do
    n = rank_in(st, x)
    u = rank_in(st, update)

    cond do
      not is_list(starts) or not placeholder?(x) or not placeholder?(update) -> nil
      n == nil or u == nil -> :put_slice_update_rank_mismatch
      length(int_list(starts)) == n and u != n -> :put_slice_update_rank_mismatch
      true -> nil
    end
  end

  defp known_op_crash(st, op, [x | _]) when op in [:indexed_add, :indexed_put] do
    case {x, shape_in(st, x)} do
      {_, shape} when is_tuple(shape) -> if 0 in Tuple.to_list(shape), do: :scatter_into_empty
      {{tag, _}, nil} when tag in [:"$a", :"$d"] -> :scatter_into_empty
      _ -> nil
    end
  end

  defp known_op_crash(st, op, args) when op in [:lu, :solve, :triangular_solve] do
    # an array of unknown shape (still pending when it joined the pool) may be empty
    empty =
      Enum.any?(int_list(args), fn arg ->
        case {arg, shape_in(st, arg)} do
          {_, shape} when is_tuple(shape) -> 0 in Tuple.to_list(shape)
          {{tag, _}, nil} when tag in [:"$a", :"$d"] -> true
          _ -> false
        end
      end)

    if empty, do: :linalg_empty_matrix
  end

  defp known_op_crash(_st, op, args)
       when op in [:window_reduce, :windows, :window_scatter] and is_list(args) do
    {window, strides, dilations} =
      case {op, args} do
        {:window_scatter, [_, _, _, _, window, strides, _, _]} -> {window, strides, []}
        {_, [_, _, window, strides, _, _, dilations]} -> {window, strides, dilations}
        _ -> {[], [], []}
      end

    cond do
      0 in int_list(strides) -> :window_zero_stride
      0 in int_list(window) -> :window_empty_hang
      Enum.any?(int_list(dilations), &(is_integer(&1) and &1 < 0)) -> :window_negative_dilation
      true -> nil
    end
  end

  defp known_op_crash(_, _, _), do: nil

  # Lengths or strides shorter than the n starts, or a zero stride.
  defp slice_crash(n, lengths, strides, shorter) do
    cond do
      length(int_list(lengths)) < n or length(int_list(strides)) < n -> shorter
      0 in int_list(strides) -> :slice_zero_stride
      true -> nil
    end
  end

  defp rank_in(st, arg) do
    case shape_in(st, arg) do
      nil -> nil
      shape -> tuple_size(shape)
    end
  end

  defp shape_in(st, {tag, label}) when tag in [:"$a", :"$t", :"$d"] do
    family = tag |> Atom.to_string() |> String.last() |> String.to_existing_atom()

    case lookup(st, family, label) do
      {_, %{shape: shape}} when is_tuple(shape) -> shape
      _ -> nil
    end
  end

  defp shape_in(_, _), do: nil

  defp placeholder?({tag, _}) when tag in [:"$a", :"$t", :"$d"], do: true
  defp placeholder?(_), do: false
end
