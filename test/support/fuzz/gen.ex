defmodule EMLX.Fuzz.Gen do
  @moduledoc false
  # The calls of the fuzz storm: `gen/1` draws one `{module, function, args}`
  # where args may hold pool placeholders (see EMLX.Fuzz.Values) and
  # `:"$q"`, `:"$q2"` (the storm's command queues). This module makes the
  # calls straight at the NIF; EMLX.Fuzz.ApiGen those at Nx and EMLX.

  import EMLX.Fuzz.Values
  alias EMLX.{NIF, Worker}
  alias EMLX.Fuzz.ApiGen

  # Ops that only build lazy MLX graphs (checked in emlx_shim.cpp): the only
  # ones that get arrays too big to evaluate. Others (and new ones) may
  # evaluate their inputs, as triangular_solve does.
  @lazy_ops ~w(exp expm1 log log1p sigmoid cos sin tan cosh sinh tanh acos asin atan acosh asinh
               atanh sqrt rsqrt cbrt erf erfc erf_inv negate sign floor ceil round conjugate
               bitwise_not square reciprocal abs real imag is_nan is_infinity is_finite
               logical_not phase population_count count_leading_zeros add subtract multiply
               divide pow remainder quotient atan2 min max bitwise_and bitwise_or bitwise_xor
               left_shift right_shift equal not_equal greater less greater_equal less_equal
               logical_and logical_or logical_xor sum product reduce_max reduce_min all any
               argmax argmin full iota eye as_type bitcast reshape squeeze broadcast_to
               broadcast transpose pad reverse slice dynamic_slice put_slice concatenate stack
               select clip contiguous dot sort argsort gather indexed_add indexed_put take
               take_along_axis cumulative_sum cumulative_product cumulative_max
               cumulative_min)a

  @doc "The ops that only build lazy MLX graphs."
  def lazy_ops, do: @lazy_ops

  ## Generators

  def gen(st) do
    r = :rand.uniform()

    cond do
      r < 0.47 -> gen_op(st)
      r < 0.51 -> gen_pipeline(st)
      r < 0.65 -> gen_nif_other(st)
      r < 0.88 -> ApiGen.gen_nx(st)
      true -> ApiGen.gen_emlx(st)
    end
  end

  # Pending arrays: every call of the storm ends with both queues synced,
  # so that outcomes (and the storm) do not depend on the workers' timing.
  # These calls use an op's result while it may still be pending: in
  # another op, after deallocating it, on the other queue, or reading it.
  # Only element-wise ops of evaluable arrays: the result is small.
  defp gen_pipeline(st) do
    {name, sig} = pick(Enum.filter(st.ops, fn {_, sig} -> sig in [~c"a", ~c"aa"] end))
    st = Map.put(st, :eager, true)
    args = for _ <- sig, do: array(st, :a)
    then = pick([:chain, :chain, :deallocate, :other_queue, :info, :to_binary, :eval])
    {__MODULE__, :pipeline, [then, name, args]}
  end

  @doc false
  def pipeline(then, name, args, q, q2) do
    result = Worker.run_op(q, name, args, nil)
    first = result |> List.wrap() |> hd()

    case then do
      :chain ->
        Worker.run_op(q, :add, [first, Worker.run_op(q, :negate, [first], nil)], nil)
        |> Worker.info()

      :deallocate ->
        :ok = NIF.deallocate(first)
        Worker.run_op(q, :negate, [first], nil) |> Worker.info()

      :other_queue ->
        Worker.run_op(q2, :negate, [first], nil) |> Worker.info()

      :info ->
        {NIF.array_info(first), Worker.info(first)}

      :to_binary ->
        NIF.to_binary(q, first, 64) |> Worker.await()

      :eval ->
        NIF.eval(q, [first]) |> Worker.await()
    end
  end

  defp queue_arg do
    cond do
      chance(0.85) -> :"$q"
      chance(0.6) -> :"$q2"
      chance(0.5) -> {:"$a", :f32_3}
      true -> garbage()
    end
  end

  defp gen_op(st) do
    {name, sig} =
      if chance(0.95),
        do: pick(st.ops),
        else: {pick([:nope, "add", 1, nil, :Add, :__struct__]), ~c"aa"}

    # Arrays that must not be evaluated go only to ops known to stay lazy.
    st = Map.put(st, :eager, name not in @lazy_ops)
    first = array(st, :a)
    rank = rank_of(st, first, :a)

    args =
      sig
      |> Enum.with_index()
      |> Enum.map(fn
        {?a, 0} -> first
        {kind, _} -> if chance(0.92), do: arg(st, kind, rank), else: garbage()
      end)

    args =
      cond do
        chance(0.9) -> args
        chance(0.3) -> Enum.drop(args, 1)
        chance(0.3) -> args ++ [arg(st, ?a, rank)]
        chance(0.5) -> improper(args)
        true -> garbage()
      end

    out = if chance(0.8), do: nil, else: type()
    {NIF, :op, [queue_arg(), name, args, out]}
  end

  defp improper([]), do: [1 | 2]
  defp improper(list), do: Enum.reduce(Enum.reverse(list), :tail, &[&1 | &2])

  def arg(st, ?a, _), do: array(st, :a)

  def arg(st, ?A, _) do
    cond do
      chance(0.8) -> for _ <- 1..rand(3), do: array(st, :a)
      chance(0.5) -> []
      true -> [array(st, :a), garbage()]
    end
  end

  def arg(_, ?i, rank), do: if(chance(0.6), do: rand(rank + 3) - 2, else: int())
  def arg(_, ?I, rank), do: ints(rank)
  def arg(_, ?t, _), do: type()
  def arg(_, ?b, _), do: flag()
  def arg(_, ?n, _), do: number()
  def arg(_, ?f, _), do: if(chance(0.7), do: :rand.normal(), else: number())
  def arg(_, ?s, _), do: pick(["U", "L", "ij,jk->ik", String.duplicate("x", 300), :U])
  def arg(_, _, _), do: garbage()

  defp gen_nif_other(st) do
    case rand(14) do
      1 ->
        shape = ints(rand(3) - 1)
        type = type()

        bin =
          cond do
            chance(0.4) -> shape_binary(shape, type)
            chance(0.5) -> :binary.copy(<<7>>, rand(64) - 1)
            true -> garbage()
          end

        {NIF, :from_binary, [queue_arg(), bin, shape, type]}

      2 ->
        limit = if chance(0.7), do: rand(100) - 1, else: int()
        {NIF, :to_binary, [queue_arg(), eval_array(st), limit]}

      3 ->
        arrays =
          cond do
            chance(0.7) -> for _ <- 1..rand(3), do: eval_array(st)
            chance(0.5) -> []
            true -> improper([eval_array(st)])
          end

        {NIF, :eval, [queue_arg(), if(chance(0.9), do: arrays, else: garbage())]}

      4 ->
        {NIF, :array_info, [maybe_garbage(array(st, :a))]}

      5 ->
        {NIF, :array_strides, [maybe_garbage(array(st, :a))]}

      6 ->
        {NIF, :deallocate, [maybe_garbage(dyn_array(st, :a))]}

      7 ->
        dev = if chance(0.05), do: :cpu, else: pick([:gpu, :tpu, nil, "cpu", 0, garbage()])
        {NIF, :queue_new, [dev, pick([-1, 0, 8, -2, 1.5, garbage()])]}

      8 ->
        {NIF, :queue_sync, [queue_arg()]}

      9 ->
        {NIF, :queue_device, [queue_arg()]}

      10 ->
        # never a valid limit: these are process-wide settings
        limit = garbage()
        limit = if is_integer(limit) and limit >= 0, do: -1, else: limit
        {NIF, pick([:set_cache_limit, :set_memory_limit, :device_available]), [limit]}

      11 ->
        {NIF, pick([:memory_info, :op_list, :mlx_version]), []}

      12 ->
        gen_program(st)

      13 ->
        mode = pick([:local, :local, :ipc, :bogus, "local", nil])
        perms = pick([0o600, 0o644, 0o1000, -1, :rw])
        {NIF, :to_pointer, [queue_arg(), eval_array(st), mode, perms]}

      14 ->
        # Raw addresses are read unchecked by design (as Nx.from_pointer):
        # only null, names of segments that do not exist, and garbage.
        source =
          case pick([0, "/emlx-fuzz-no-such-segment", "", "no-slash", :garbage]) do
            :garbage -> not_an_address()
            other -> other
          end

        if chance(0.3),
          do: {NIF, :shm_unlink, [source]},
          else: {NIF, :from_pointer, [queue_arg(), source, ints(rand(3) - 1), type()]}
    end
  end

  defp not_an_address do
    g = garbage()
    if is_integer(g) and g > 0, do: 0, else: g
  end

  # A program of up to three instructions over slots (inputs first, then
  # every instruction's results), made and run in one call. Only ops whose
  # known crashes can be told from the instruction alone, and that stay lazy.
  @program_ops @lazy_ops -- [:dynamic_slice, :put_slice, :indexed_add, :indexed_put]

  defp gen_program(st) do
    ops = Enum.filter(st.ops, fn {name, _} -> name in @program_ops end)
    ninputs = rand(3) - 1

    instrs =
      for k <- 1..rand(3) do
        {name, sig} = pick(ops)
        slots = ninputs + k - 1

        args =
          for kind <- sig do
            case kind do
              ?a -> slot(slots)
              ?A -> for _ <- 1..rand(2), do: slot(slots)
              other -> arg(st, other, 2)
            end
          end

        {name, if(chance(0.95), do: args, else: garbage()),
         if(chance(0.8), do: nil, else: type())}
      end

    instrs = if chance(0.95), do: instrs, else: [garbage() | instrs]
    outs = for _ <- 1..rand(2), do: slot(ninputs + length(instrs))
    inputs = for _ <- 1..ninputs//1, do: fixed_array(st)
    ninputs = if chance(0.95), do: ninputs, else: int()
    run_queue = if chance(0.9), do: :"$q", else: queue_arg()

    {__MODULE__, :program,
     [queue_arg(), instrs, ninputs, outs, run_queue, inputs, pick([true, false, nil])]}
  end

  defp slot(n) do
    cond do
      chance(0.9) -> rand(max(n, 1)) - 1
      chance(0.5) -> pick([n, n + 5, 2_147_483_647, -1])
      true -> garbage()
    end
  end

  # Program inputs: fixed, evaluable arrays of small rank.
  defp fixed_array(st) do
    {l, _, _} = pick(Enum.filter(st.fixed_lists.a, fn {_, _, m} -> m.safe end))
    {:"$a", l}
  end

  @doc false
  def program(queue, instrs, ninputs, outs, run_queue, inputs, compile) do
    program = NIF.program_new(queue, instrs, ninputs, outs)
    run_queue |> NIF.program_run(program, inputs, compile) |> Worker.await()
  end

  defp eval_array(st), do: if(chance(0.9), do: array(st, :a, true), else: garbage())

  defp maybe_garbage(x), do: if(chance(0.85), do: x, else: garbage())
end
