defmodule EMLX.FuzzTest do
  @moduledoc """
  A seeded storm of bad calls at the public API (Nx on `EMLX.Backend`,
  `EMLX.*` on device refs) and straight at the NIF (`EMLX.NIF.op/4` with
  every op of `EMLX.NIF.op_list/0`, and the other NIF functions).

  Every call must raise an Elixir exception or return a valid result; none
  may crash or hang the VM. Arrays that are huge (lazily: MLX allocates on
  evaluation) are never evaluated.

  Environment:

    * `EMLX_FUZZ_SEED` - the seed (default 20_240_611); the storm is
      reproducible call for call from it.
    * `EMLX_FUZZ_CALLS` - the number of calls (default 12_000).
    * `EMLX_FUZZ_LOG` - a file that gets one line per call, written
      unbuffered *before* the call runs: after a crash its last line is the
      culprit. Run the storm in its own OS process for that:
      `EMLX_FUZZ_LOG=/tmp/fuzz.log mix test test/emlx/fuzz_test.exs`.
    * `EMLX_FUZZ_KNOWN=run` - do not skip the known crashes below.
  """
  use EMLX.Case, async: false

  @moduletag timeout: 900_000

  # Crash classes. Each of these killed the VM when this suite was written;
  # each is fixed since in the shim by a check that raises instead. The storm
  # keeps generating them (see Storm.crash_class/2) and counts them as
  # "formerly crashing". A class that crashes again goes into @known_crashes
  # (id => reproduction), which the storm then skips (EMLX_FUZZ_KNOWN=run
  # runs them anyway). The reproductions, given
  #   q = EMLX.Application.default_worker(:cpu)
  #   m = EMLX.Backend.from_nx(Nx.iota({2, 3}, backend: EMLX.Backend)) |> elem(1)
  #   a = EMLX.Backend.from_nx(Nx.tensor([1.0, 2.0, 3.0], backend: EMLX.Backend)) |> elem(1)
  #   i = EMLX.Backend.from_nx(Nx.tensor(0, backend: EMLX.Backend)) |> elem(1)
  #   e = EMLX.NIF.from_binary(q, <<>>, {0, 0}, {:f, 32}) |> EMLX.Worker.await()
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
  #
  # Never in the storm (it evaluates no array too big for memory): a failed
  # MLX allocation segfaulted in MLX's CPU copy kernel instead of raising, e.g.
  #   Nx.broadcast(Nx.tensor(1.0, backend: EMLX.Backend), {2_147_483_647, 2_147_483_647})
  #   |> Nx.to_binary(limit: 1)
  # and :triangular_solve evaluates its input at once (its singularity check).
  @known_crashes %{}

  @doc false
  def known_crashes, do: @known_crashes

  defmodule Storm do
    @moduledoc false
    # The generator and the runner. A call is `{module, function, args}`
    # where args may hold placeholders: `{:"$a", label}` (a NIF array ref),
    # `{:"$t", label}` (an Nx tensor), `{:"$d", label}` (a device ref),
    # `:"$q"` and `:"$q2"` (command queues). Labels name fixed pool entries
    # (atoms) or earlier results (`{:r, call_index}`).

    alias EMLX.{NIF, Worker}

    @limit_elems 4096
    @shape_ops [:full, :iota, :eye, :reshape, :broadcast_to, :broadcast]
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
    @limit_int 1024
    @dyn_size 48

    @valid_types EMLX.Backend.supported_types()
    @bad_types [
      {:f, 8},
      {:u, 4},
      {:s, 2},
      {:c, 128},
      {:x, 32},
      {:f, 18_446_744_073_709_551_616},
      {:f},
      {:f, 32, 1},
      :f32,
      "f32",
      {"f", 32},
      {:f, -32}
    ]
    @interesting_ints [
      -9_223_372_036_854_775_808,
      -2_147_483_649,
      -2_147_483_648,
      -100,
      -3,
      -2,
      -1,
      0,
      1,
      2,
      3,
      4,
      7,
      31,
      32,
      33,
      64,
      100,
      65_536,
      2_147_483_647,
      2_147_483_648,
      4_294_967_296,
      9_223_372_036_854_775_807,
      18_446_744_073_709_551_616
    ]

    ## The pool

    def new(seed) do
      :rand.seed(:exsss, {seed, 0x5EED, 0xF022})
      q = EMLX.Application.default_worker(:cpu)
      {:ok, q2} = NIF.queue_new(:cpu)

      arr = fn data, type, shape ->
        t = Nx.tensor(data, type: type, backend: Nx.BinaryBackend) |> Nx.reshape(shape)
        NIF.from_binary(q, Nx.to_binary(t), shape, type) |> Worker.await()
      end

      op = fn queue, name, args -> Worker.run_op(queue, name, args, nil) end
      f32x3 = arr.([1.5, -2.0, 3.25], {:f, 32}, {3})

      # {label, ref, meta}; meta: queue, whether it may be evaluated, whether it is usable as Nx tensor
      safe = [
        {:f32_2x3, arr.([0.0, 1.0, -2.5, 3.0, :nan, :infinity], {:f, 32}, {2, 3})},
        {:f32_3, f32x3},
        {:f32_0, NIF.from_binary(q, <<>>, {0}, {:f, 32}) |> Worker.await()},
        {:f32_3x0, NIF.from_binary(q, <<>>, {3, 0}, {:f, 32}) |> Worker.await()},
        {:f32_scalar, arr.(4.0, {:f, 32}, {})},
        {:f64_2, arr.([1.0e300, -0.0], {:f, 64}, {2})},
        {:f16_4, arr.([1, 2, 3, 4], {:f, 16}, {2, 2})},
        {:bf16_2x2, arr.([1, -1, 0.5, 8], {:bf, 16}, {2, 2})},
        {:c64_2, arr.([Complex.new(1, 2), Complex.new(0, -1)], {:c, 64}, {2})},
        {:s32_3, arr.([-7, 2_000_000_000, 1], {:s, 32}, {3})},
        {:s32_2x1, arr.([1, -5], {:s, 32}, {2, 1})},
        {:s32_3x2, arr.([0, 1, 1, 2, 9, -9], {:s, 32}, {3, 2})},
        {:s32_scalar, arr.(2, {:s, 32}, {})},
        {:s64_4,
         arr.([-9_223_372_036_854_775_808, -1, 0, 9_223_372_036_854_775_807], {:s, 64}, {4})},
        {:s8_2x1x2, arr.([-128, 127, 0, 1], {:s, 8}, {2, 1, 2})},
        {:u8_2x2, arr.([0, 255, 1, 2], {:u, 8}, {2, 2})},
        {:u64_1, arr.([18_446_744_073_709_551_615], {:u, 64}, {1})},
        {:bool_3, op.(q, :greater, [f32x3, arr.([0.0, 0.0, 0.0], {:f, 32}, {3})])},
        {:lazy_f32_3, op.(q, :multiply, [f32x3, f32x3])},
        {:lazy_s32_2x3, op.(q, :iota, [[2, 3], 1, {:s, 32}])}
      ]

      q2_avail = NIF.from_binary(q2, <<1.0::float-32-native>>, {1}, {:f, 32}) |> Worker.await()

      other_queue = [
        {:q2_available_f32_1, q2_avail},
        {:q2_lazy_f32_1, op.(q2, :add, [q2_avail, q2_avail])}
      ]

      dead = arr.([1, 2, 3], {:s, 32}, {3})
      :ok = NIF.deallocate(dead)

      huge = [
        {:huge_full_f32, op.(q, :full, [1.0, [2_147_483_647, 2_147_483_647], {:f, 32}])},
        {:huge_full_4d, op.(q, :full, [7, [65_536, 65_536, 65_536, 65_536], {:s, 32}])},
        {:huge_iota, op.(q, :iota, [[46_340, 46_340], 0, {:f, 32}])}
      ]

      meta = fn ref, queue, safe? ->
        shape =
          try do
            elem(Worker.info(ref), 0)
          rescue
            ArgumentError -> nil
          end

        %{queue: queue, safe: safe?, shape: shape}
      end

      nif_fixed =
        Enum.map(safe, fn {l, r} -> {l, r, meta.(r, :q, true)} end) ++
          Enum.map(other_queue, fn {l, r} -> {l, r, meta.(r, :q2, true)} end) ++
          [{:deallocated, dead, meta.(dead, :q, true)}] ++
          Enum.map(huge, fn {l, r} -> {l, r, meta.(r, :q, false)} end)

      nx_fixed =
        for {l, r, m} <- nif_fixed,
            m.queue == :q,
            m.shape != nil,
            0 not in Tuple.to_list(m.shape),
            not bool?(r) do
          {l, EMLX.Backend.to_nx({:cpu, r}), m}
        end

      dead_t = Nx.tensor([1.0, 2.0], backend: EMLX.Backend)
      Nx.backend_deallocate(dead_t)
      q2_t = EMLX.Backend.to_nx({:cpu, q2_avail})

      nx_fixed =
        nx_fixed ++
          [
            {:nx_deallocated, dead_t, %{queue: :q, safe: true, shape: {2}}},
            {:nx_q2, q2_t, meta.(q2_avail, :q2, true)},
            {:nx_binary_backend, Nx.tensor([[1, 2], [3, 4]], backend: Nx.BinaryBackend),
             %{queue: :binary, safe: true, shape: {2, 2}}}
          ]

      dev_fixed = for {l, r, m} <- nif_fixed, do: {l, {:cpu, r}, m}

      %{
        q: q,
        q2: q2,
        ops: NIF.op_list(),
        fixed: %{
          a: index(nif_fixed),
          t: index(nx_fixed),
          d: index(dev_fixed)
        },
        fixed_lists: %{a: nif_fixed, t: nx_fixed, d: dev_fixed},
        dyn: %{a: %{}, t: %{}, d: %{}},
        counts: %{},
        invalid: [],
        calls: 0,
        skipped: %{},
        examples: %{},
        notes: %{},
        by_fun: %{},
        former: %{},
        run_known: System.get_env("EMLX_FUZZ_KNOWN") == "run"
      }
    end

    defp bool?(ref), do: elem(Worker.info(ref), 1) == :bool

    defp index(list), do: Map.new(list, fn {l, r, m} -> {l, {r, m}} end)

    ## Random helpers

    defp rand(n), do: :rand.uniform(n)
    defp chance(p), do: :rand.uniform() < p
    defp pick(list) when is_list(list), do: Enum.at(list, rand(length(list)) - 1)
    defp pick(tuple) when is_tuple(tuple), do: elem(tuple, rand(tuple_size(tuple)) - 1)

    defp garbage do
      pick([
        :foo,
        nil,
        true,
        false,
        :cpu,
        :gpu,
        :nan,
        :infinity,
        :bool,
        self(),
        make_ref(),
        %{},
        %{"shape" => {2}},
        1.5,
        -0.0,
        1.0e308,
        0,
        -1,
        2_147_483_648,
        -9_223_372_036_854_775_809,
        18_446_744_073_709_551_616,
        1_267_650_600_228_229_401_496_703_205_376,
        [1 | 2],
        [[1, [2, [3]]]],
        [:a, :b],
        [],
        {},
        {1, 2, 3},
        {:f, 32},
        {:u, 4},
        "str",
        <<1, 2, 3>>,
        ~c"abc",
        &Kernel.+/2,
        1..3,
        List.duplicate(1, 5000),
        :"$q",
        {:"$a", :f32_3},
        {:"$a", :deallocated}
      ])
    end

    defp int do
      cond do
        chance(0.55) -> rand(7) - 3
        chance(0.9) -> pick(@interesting_ints)
        true -> garbage()
      end
    end

    defp ints(rank_hint) do
      len =
        cond do
          chance(0.5) -> rank_hint
          chance(0.85) -> rand(5) - 1
          chance(0.5) -> pick([32, 33, 40])
          true -> 5000
        end

      list = for _ <- 1..len//1, do: if(chance(0.8), do: rand(4) - 1, else: int())

      cond do
        chance(0.6) -> list
        chance(0.85) -> List.to_tuple(list)
        chance(0.5) -> list ++ [garbage()]
        true -> garbage()
      end
    end

    defp type do
      cond do
        chance(0.75) -> pick(@valid_types)
        chance(0.5) -> :bool
        chance(0.8) -> pick(@bad_types)
        true -> garbage()
      end
    end

    defp number do
      cond do
        chance(0.3) -> rand(9) - 5
        chance(0.3) -> :rand.normal() * 1.0e3
        chance(0.3) -> pick([:nan, :infinity, :neg_infinity, 1.0e308, -0.0])
        chance(0.3) -> {pick([1, 2.5, :nan]), pick([-1, 0.0, :infinity])}
        chance(0.5) -> pick(@interesting_ints)
        true -> garbage()
      end
    end

    defp flag, do: if(chance(0.9), do: chance(0.5), else: garbage())

    # An array placeholder of a family; `evaluable` excludes arrays that
    # must never be evaluated. Dynamic entries are earlier results.
    defp array(st, family, evaluable \\ false) do
      fixed = st.fixed_lists[family]
      dyn = Map.to_list(st.dyn[family]) |> Enum.sort()

      candidates =
        if chance(0.35) and dyn != [],
          do: Enum.map(dyn, fn {l, {_, m}} -> {l, m} end),
          else: Enum.map(fixed, fn {l, _, m} -> {l, m} end)

      candidates =
        if evaluable or Map.get(st, :eager, false),
          do: Enum.filter(candidates, fn {_, m} -> m.safe end),
          else: candidates

      case candidates do
        [] -> {:"$#{family}", :f32_3}
        _ -> {:"$#{family}", elem(pick(candidates), 0)}
      end
    end

    defp rank_of(st, {tag, label}, family) when tag in [:"$a", :"$t", :"$d"] do
      case lookup(st, family, label) do
        {_, %{shape: shape}} when is_tuple(shape) -> tuple_size(shape)
        _ -> rand(4) - 1
      end
    end

    defp rank_of(_, _, _), do: rand(4) - 1

    defp lookup(st, family, label),
      do: Map.get(st.fixed[family], label) || Map.get(st.dyn[family], label)

    ## Generators

    def gen(st) do
      r = :rand.uniform()

      cond do
        r < 0.47 -> gen_op(st)
        r < 0.51 -> gen_pipeline(st)
        r < 0.65 -> gen_nif_other(st)
        r < 0.88 -> gen_nx(st)
        true -> gen_emlx(st)
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

    defp sync(st) do
      for q <- [st.q, st.q2], do: :ok = q |> NIF.queue_sync() |> Worker.await()
      st
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

    defp arg(st, ?a, _), do: array(st, :a)

    defp arg(st, ?A, _) do
      cond do
        chance(0.8) -> for _ <- 1..rand(3), do: array(st, :a)
        chance(0.5) -> []
        true -> [array(st, :a), garbage()]
      end
    end

    defp arg(_, ?i, rank), do: if(chance(0.6), do: rand(rank + 3) - 2, else: int())
    defp arg(_, ?I, rank), do: ints(rank)
    defp arg(_, ?t, _), do: type()
    defp arg(_, ?b, _), do: flag()
    defp arg(_, ?n, _), do: number()
    defp arg(_, ?f, _), do: if(chance(0.7), do: :rand.normal(), else: number())
    defp arg(_, ?s, _), do: pick(["U", "L", "ij,jk->ik", String.duplicate("x", 300), :U])
    defp arg(_, _, _), do: garbage()

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
          {NIF, :queue_new, [dev]}

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

    defp dyn_array(st, family, evaluable \\ false) do
      labels = for {l, {_, m}} <- st.dyn[family], m.safe or not evaluable, do: l

      case Enum.sort(labels) do
        [] -> garbage()
        labels -> {:"$#{family}", pick(labels)}
      end
    end

    # A binary that fits the shape and type when both are sane and small.
    defp shape_binary(shape, type) do
      dims = if is_tuple(shape), do: Tuple.to_list(shape), else: int_list(shape)

      with true <- is_list(dims) and Enum.all?(dims, &(is_integer(&1) and &1 in 0..64)),
           bits when is_integer(bits) <- type_bits(type),
           n when n <= 4096 <- Enum.product(dims) do
        :binary.copy(<<0>>, n * div(bits, 8))
      else
        _ -> <<0, 0, 0, 0>>
      end
    end

    defp type_bits(:bool), do: 8
    defp type_bits({_, bits}) when bits in [8, 16, 32, 64], do: bits
    defp type_bits(_), do: nil

    ## Nx on EMLX.Backend

    defp t(st), do: if(chance(0.93), do: array(st, :t, true), else: nx_garbage())
    defp th(st), do: if(chance(0.95), do: array(st, :t), else: nx_garbage())

    # Nx reads `x.shape` of some arguments, which warns (a deprecation) for
    # atoms, and warns on maps given to stack/concatenate: no such garbage.
    defp nx_garbage do
      g = garbage()
      if is_atom(g) or is_map(g), do: nx_garbage(), else: g
    end

    defp trank(st, t), do: rank_of(st, t, :t)

    defp axes(rank) do
      cond do
        chance(0.6) -> for _ <- 1..rand(2), do: rand(rank + 3) - 2
        chance(0.5) -> ints(rank)
        true -> garbage()
      end
    end

    # Nx warns (0..-1 has a default step) on indices whose last axis is empty.
    defp indices(st) do
      i = t(st)

      case i do
        {:"$t", l} ->
          case lookup(st, :t, l) do
            {_, %{shape: shape}}
            when tuple_size(shape) > 0 and elem(shape, tuple_size(shape) - 1) == 0 ->
              {:"$t", :s32_2x1}

            _ ->
              i
          end

        _ ->
          i
      end
    end

    # Nx.iota/2 and Nx.eye/2 warn (a deprecation) on anything but a tuple.
    defp shape_tuple(rank) do
      case ints(rank) do
        {tag, _} when tag in [:"$a", :"$t", :"$d"] -> {-1, :x}
        t when is_tuple(t) -> t
        l when is_list(l) -> List.to_tuple(int_list(l))
        _ -> {-1, :x}
      end
    end

    defp axis(rank), do: if(chance(0.7), do: rand(rank + 3) - 2, else: int())

    defp opts(pairs), do: Enum.filter(pairs, fn _ -> chance(0.8) end)

    @unary [:exp, :log, :sqrt, :abs, :negate, :sign, :floor, :round, :bitwise_not, :erf_inv] ++
             [:is_nan, :logical_not, :population_count, :count_leading_zeros, :real, :conjugate]
    @binary [:add, :subtract, :multiply, :divide, :pow, :remainder, :quotient, :atan2, :min] ++
              [:bitwise_and, :left_shift, :right_shift, :equal, :less, :logical_xor, :max]

    defp gen_nx(st) do
      a = t(st)
      r = trank(st, a)

      case rand(26) do
        1 ->
          {Nx, pick(@unary), [a]}

        2 ->
          {Nx, pick(@binary), [a, if(chance(0.8), do: t(st), else: number())]}

        3 ->
          {Nx, :reshape, [th(st), ints(r)]}

        4 ->
          {Nx, pick([:sum, :product, :reduce_max, :reduce_min, :all, :any]),
           [th(st), opts(axes: axes(r), keep_axes: flag())]}

        5 ->
          {Nx, pick([:argmax, :argmin]),
           [a, opts(axis: axis(r), keep_axis: flag(), tie_break: pick([:low, :high, :mid]))]}

        6 ->
          {Nx, :transpose, [th(st), opts(axes: axes(r))]}

        7 ->
          {Nx, :broadcast, [th(st), ints(r + 1), opts(axes: axes(r))]}

        8 ->
          {Nx, :as_type, [th(st), type()]}

        9 ->
          {Nx, :bitcast, [a, type()]}

        10 ->
          {Nx, :slice, [th(st), ints(r), ints(r), opts(strides: ints(r))]}

        11 ->
          starts =
            for _ <- 1..max(r, 1), do: if(chance(0.7), do: int(), else: t(st))

          {Nx, :put_slice, [a, starts, t(st)]}

        12 ->
          {Nx, :take, [a, t(st), opts(axis: axis(r))]}

        13 ->
          {Nx, :take_along_axis, [a, t(st), opts(axis: axis(r))]}

        14 ->
          {Nx, :gather, [a, indices(st), opts(axes: axes(r))]}

        15 ->
          {Nx, pick([:indexed_add, :indexed_put]), [a, indices(st), t(st), opts(axes: axes(r))]}

        16 ->
          if chance(0.5),
            do: {Nx, :dot, [a, t(st)]},
            else: {Nx, :dot, [a, axes(r), axes(r), t(st), axes(r), axes(r)]}

        17 ->
          config = for _ <- 1..max(r, 0)//1, do: {int(), int(), rand(3) - 1}
          {Nx, :pad, [a, number(), if(chance(0.9), do: config, else: garbage())]}

        18 ->
          {Nx, pick([:concatenate, :stack]),
           [for(_ <- 1..rand(3), do: t(st)), opts(axis: axis(r))]}

        19 ->
          {Nx, pick([:sort, :argsort]),
           [a, opts(axis: axis(r), direction: pick([:asc, :desc, :up]))]}

        20 ->
          {Nx, pick([:cumulative_sum, :cumulative_product, :cumulative_max, :cumulative_min]),
           [a, opts(axis: axis(r), reverse: flag())]}

        21 ->
          {Nx, :iota,
           [shape_tuple(rand(3)), opts(axis: axis(2), type: type(), backend: EMLX.Backend)]}

        22 ->
          {Nx, pick([:squeeze, :reverse]), [a, opts(axes: axes(r))]}

        23 ->
          {Nx, pick([:select, :clip]), [a, t(st), t(st)]}

        24 ->
          data = pick([[1, 2, 3], [[1, 2], [3]], [:a], 2 ** 70, [1.0, :nan], [], [[]], garbage()])
          {Nx, :tensor, [data, opts(type: type(), backend: EMLX.Backend)]}

        25 ->
          bin = if chance(0.7), do: :binary.copy(<<1>>, rand(16) - 1), else: garbage()
          {Nx, :from_binary, [bin, type(), [backend: EMLX.Backend]]}

        26 ->
          case rand(6) do
            1 -> {Nx, :backend_deallocate, [dyn_array(st, :t)]}
            2 -> {Nx, :backend_transfer, [dyn_array(st, :t, true), Nx.BinaryBackend]}
            3 -> {Nx, :to_number, [a]}
            4 -> {Nx, :to_binary, [a, opts(limit: int())]}
            5 -> {Nx, :to_list, [a]}
            6 -> {Nx, :eye, [shape_tuple(2), opts(type: type(), backend: EMLX.Backend)]}
          end
      end
    end

    ## EMLX on device refs

    @emlx_unary [:abs, :exp, :sqrt, :negate, :bitwise_not, :logical_not, :is_nan, :real]
    @emlx_binary [:add, :divide, :remainder, :quotient, :left_shift, :equal, :maximum]

    defp d(st), do: if(chance(0.93), do: array(st, :d), else: garbage())
    defp de(st), do: if(chance(0.93), do: array(st, :d, true), else: garbage())

    defp gen_emlx(st) do
      a = d(st)
      r = rank_of(st, a, :d)

      case rand(16) do
        1 ->
          {EMLX, pick(@emlx_unary), [a]}

        2 ->
          {EMLX, pick(@emlx_binary), [a, d(st)]}

        3 ->
          {EMLX, pick([:sum, :product, :max, :min, :all, :any]), [a, axes(r), flag()]}

        4 ->
          {EMLX, pick([:argmax, :argmin]), [a, axis(r), flag()]}

        5 ->
          {EMLX, pick([:reshape, :transpose, :squeeze, :broadcast_to]), [a, ints(r)]}

        6 ->
          {EMLX, pick([:astype, :view]), [a, type()]}

        7 ->
          {EMLX, pick([:where, :clip]), [a, d(st), d(st)]}

        8 ->
          {EMLX, pick([:concatenate, :stack]), [for(_ <- 1..rand(3), do: d(st)), axis(r)]}

        9 ->
          {EMLX, pick([:sort, :argsort, :cumulative_sum, :cumulative_max]),
           [a, axis(r)] ++ if(chance(0.5), do: [flag()], else: [])}
          |> fix_arity()

        10 ->
          {EMLX, pick([:take, :take_along_axis]), [a, d(st), axis(r)]}

        11 ->
          case rand(4) do
            1 -> {EMLX, :full, [number(), ints(rand(3)), type()]}
            2 -> {EMLX, :eye, [int(), int(), type()]}
            3 -> {EMLX, :ones, [ints(rand(3)), type(), pick([:cpu, :gpu, :tpu])]}
            4 -> {EMLX, :scalar_tensor, [number(), type()]}
          end

        12 ->
          shape = ints(rand(3) - 1)
          type = type()
          {EMLX, :from_blob, [shape_binary(shape, type), shape, type]}

        13 ->
          case rand(5) do
            1 -> {EMLX, :to_blob, [de(st)]}
            2 -> {EMLX, :to_blob, [de(st), int()]}
            3 -> {EMLX, :item, [de(st)]}
            4 -> {EMLX, :eval, [de(st)]}
            5 -> {EMLX, :deallocate, [dyn_array(st, :d)]}
          end

        14 ->
          {EMLX, pick([:shape, :scalar_type, :strides, :to_nx]), [a]}

        15 ->
          {name, sig} = pick(st.ops)
          st = Map.put(st, :eager, name not in @lazy_ops)
          args = for k <- sig, do: if(chance(0.9), do: emlx_arg(st, k, r), else: garbage())
          {EMLX, :op, [name, args] ++ if(chance(0.3), do: [type()], else: [])}

        16 ->
          case rand(5) do
            1 -> {EMLX, pick([:set_cache_limit, :set_memory_limit]), [pick([-1, 1.5, :x])]}
            2 -> {EMLX.CommandQueue, :new, [pick([:tpu, nil, "cpu"])]}
            3 -> {EMLX.CommandQueue, :synchronize, [garbage()]}
            4 -> {EMLX.CommandQueue, :with_queue, [garbage(), fn -> :ok end]}
            5 -> {EMLX.Backend, :to_nx, [garbage()]}
          end
      end
    end

    defp fix_arity({EMLX, f, [a, ax, _flag]}) when f in [:sort, :argsort], do: {EMLX, f, [a, ax]}

    defp fix_arity({EMLX, f, [a, ax]}) when f in [:cumulative_sum, :cumulative_max],
      do: {EMLX, f, [a, ax, false]}

    defp fix_arity(call), do: call

    defp emlx_arg(st, ?a, _), do: array(st, :d)
    defp emlx_arg(st, ?A, _), do: for(_ <- 1..rand(2), do: array(st, :d))
    defp emlx_arg(st, kind, rank), do: arg(st, kind, rank)

    ## Known crashes (see @known_crashes in the test module)

    @doc "The id of the known crash a call would hit (one still listed in @known_crashes), or nil."
    def known_crash(st, call) do
      id = crash_class(st, call)
      if id && Map.has_key?(EMLX.FuzzTest.known_crashes(), id), do: id
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

        {__MODULE__, :program, [_, instrs | _]} when is_list(instrs) ->
          Enum.find_value(int_list(instrs), fn
            {name, args, _} when is_list(args) ->
              crash_class(st, {NIF, :op, [nil, name, args, nil]})

            _ ->
              nil
          end)

        {EMLX, fun, args} when fun in [:reshape, :broadcast_to, :full, :ones] ->
          if long_list?(args), do: :rank_over_32

        {Nx, fun, args} when fun in [:reshape, :broadcast, :iota, :eye] ->
          if long_list?(args), do: :rank_over_32

        _ ->
          nil
      end
    end

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

      cond do
        length(int_list(lengths)) < n or length(int_list(strides)) < n ->
          :slice_lists_shorter_than_starts

        0 in int_list(strides) ->
          :slice_zero_stride

        true ->
          nil
      end
    end

    # The shim checks that there is one start per dimension; shorter
    # lengths or strides are then read out of bounds. Pending pool arrays
    # have no known shape, so the rules go by the lists alone where they can.
    defp known_op_crash(_st, :dynamic_slice, [_, starts, lengths, strides]) do
      n = if is_list(starts), do: length(int_list(starts)), else: 0

      cond do
        length(int_list(lengths)) < n or length(int_list(strides)) < n ->
          :dynamic_slice_lists_shorter_than_rank

        0 in int_list(strides) ->
          :slice_zero_stride

        true ->
          nil
      end
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

    defp int_list(t) when is_tuple(t), do: Tuple.to_list(t)

    defp int_list(l) when is_list(l) do
      if proper_list?(l), do: l, else: []
    end

    defp int_list(_), do: []

    defp proper_list?([]), do: true
    defp proper_list?([_ | t]), do: proper_list?(t)
    defp proper_list?(_), do: false

    ## Running

    def resolve(term, st) do
      case term do
        {:"$a", l} ->
          entry(st, :a, l)

        {:"$t", l} ->
          entry(st, :t, l)

        {:"$d", l} ->
          entry(st, :d, l)

        :"$q" ->
          st.q

        :"$q2" ->
          st.q2

        [h | t] ->
          [resolve(h, st) | resolve(t, st)]

        t when is_tuple(t) ->
          t |> Tuple.to_list() |> Enum.map(&resolve(&1, st)) |> List.to_tuple()

        other ->
          other
      end
    end

    defp entry(st, family, label) do
      case lookup(st, family, label) do
        {term, _meta} -> term
        nil -> :missing
      end
    end

    # The arrays a call reads, and whether all of them may be evaluated.
    defp inputs_safe?(st, term) do
      case term do
        {tag, l} when tag in [:"$a", :"$t", :"$d"] ->
          family = tag |> Atom.to_string() |> String.last() |> String.to_atom()

          case lookup(st, family, l) do
            {_, %{safe: safe}} -> safe
            nil -> true
          end

        [h | t] ->
          inputs_safe?(st, h) and inputs_safe?(st, t)

        t when is_tuple(t) ->
          t |> Tuple.to_list() |> Enum.all?(&inputs_safe?(st, &1))

        i when is_integer(i) ->
          abs(i) <= @limit_int

        _ ->
          true
      end
    end

    @doc "Runs one call; returns the new state."
    def step(st, i, log) do
      call = gen(st)
      {mod, fun, args} = call
      known = if st.run_known, do: nil, else: known_crash(st, call)

      if log,
        do: :ok = IO.binwrite(log, "#{i} #{if known, do: "SKIP ", else: ""}#{describe(call)}\n")

      st = %{st | by_fun: Map.update(st.by_fun, {mod, fun}, 1, &(&1 + 1))}
      class = if known, do: nil, else: crash_class(st, call)
      st = if class, do: %{st | former: Map.update(st.former, class, 1, &(&1 + 1))}, else: st

      if known do
        %{st | skipped: Map.update(st.skipped, known, 1, &(&1 + 1)), calls: st.calls + 1}
      else
        resolved = Enum.map(args, &resolve(&1, st))
        resolved = if fun == :pipeline, do: resolved ++ [st.q, st.q2], else: resolved
        run(st, i, call, resolved) |> sync()
      end
    end

    defp run(st, i, {mod, fun, args} = call, resolved) do
      safe = inputs_safe?(st, args)

      outcome =
        try do
          {:ok, mod |> apply(fun, resolved) |> await(mod, fun, resolved)}
        rescue
          e -> {:raise, e.__struct__}
        catch
          kind, reason -> {kind, reason}
        end

      st = %{st | calls: st.calls + 1}

      case outcome do
        {:ok, value} ->
          checked =
            try do
              case call do
                {Nx, _, _} -> check_nx(st, call, value, resolved, safe, i)
                _ -> check(st, call, value, safe, i)
              end
            rescue
              e in [EMLX.NIFError, ArgumentError] -> {:raised_at_read, e.__struct__, st}
              e -> {:invalid, {:check_raised, e}}
            end

          case checked do
            {:ok, st} ->
              count(st, :ok)

            {:raised_at_read, module, st} ->
              key = {:raised_at_first_read, module}
              st |> count(key) |> example(key, call)

            {:invalid, why} ->
              st = count(st, :ok)
              %{st | invalid: [{i, describe(call), why} | st.invalid]}
          end

        {:raise, module} ->
          st |> count(module) |> example(module, call)

        {kind, reason} ->
          st = count(st, kind)
          %{st | invalid: [{i, describe(call), {kind, reason}} | st.invalid]}
      end
    end

    def describe(call), do: inspect(call, limit: 40, printable_limit: 64, width: :infinity)

    defp count(st, key), do: %{st | counts: Map.update(st.counts, key, 1, &(&1 + 1))}

    # The first call that ended each way, to print.
    defp example(st, key, call) do
      if Map.has_key?(st.examples, key),
        do: st,
        else: %{st | examples: Map.put(st.examples, key, describe(call))}
    end

    # op/4 returns its (pending) arrays at once, or {:wait, arrays} when the
    # queue is deep: then the caller syncs, as EMLX.Worker.run_op/4 does.
    defp await({:wait, value}, NIF, :op, [queue | _]) do
      queue |> NIF.queue_sync() |> Worker.await()
      value
    end

    defp await(value, NIF, :op, _), do: value

    defp await(ref, NIF, fun, _)
         when fun in [:from_binary, :to_binary, :eval, :queue_sync, :to_pointer, :from_pointer],
         do: Worker.await(ref)

    defp await(value, _, _, _), do: value

    ## Result checks: a returned value must be well-formed

    defp check(st, {NIF, :op, _}, value, safe, i) do
      refs = List.wrap(value)

      if refs != [] and Enum.all?(refs, &is_reference/1),
        do: add_arrays(st, :a, refs, safe, i, fn r -> r end),
        else: {:invalid, {:not_arrays, value}}
    end

    defp check(st, {NIF, :from_binary, [_, _, shape, _]}, ref, safe, i) do
      {got, _, _} = Worker.info(ref)

      if got == List.to_tuple(int_list(shape)),
        do: add_arrays(st, :a, [ref], safe, i, & &1),
        else: {:invalid, {:shape, got}}
    end

    defp check(st, {NIF, :to_binary, [_, _, limit]}, bin, _safe, _i) do
      if is_binary(bin) and byte_size(bin) <= limit, do: {:ok, st}, else: {:invalid, bin}
    end

    defp check(st, {NIF, fun, _}, value, _safe, _i) do
      ok =
        case {fun, value} do
          {:eval, :ok} -> true
          {:queue_sync, :ok} -> true
          {:array_info, {shape, _, owner}} -> is_tuple(shape) and is_reference(owner)
          {:array_info, {:pending, owner}} -> is_reference(owner)
          {:array_strides, {:pending, owner}} -> is_reference(owner)
          {:array_strides, strides} -> is_tuple(strides)
          {:to_pointer, {address, bytes}} when is_integer(address) -> is_integer(bytes)
          {:to_pointer, {name, bytes}} when is_binary(name) -> unlink(name) and is_integer(bytes)
          {:from_pointer, ref} -> is_reference(ref)
          {:shm_unlink, :ok} -> true
          {:program, list} -> is_list(list)
          {:deallocate, v} -> v in [:ok, :already_deallocated]
          {:queue_new, {:ok, q}} -> is_reference(q)
          {:queue_new, {:error, msg}} -> is_list(msg)
          {:queue_device, dev} -> dev in [:cpu, :gpu]
          {:device_available, b} -> is_boolean(b)
          {:memory_info, %{active_memory: _}} -> true
          {:op_list, l} -> is_list(l)
          {:mlx_version, v} -> is_list(v)
          {:reset_peak_memory, :ok} -> true
          _ -> false
        end

      if ok, do: {:ok, st}, else: {:invalid, {fun, value}}
    end

    defp check(st, {__MODULE__, :program, _}, value, safe, i) do
      if is_list(value) and Enum.all?(value, &is_reference/1),
        do: add_arrays(st, :a, value, safe, i, & &1),
        else: {:invalid, {:not_arrays, value}}
    end

    defp check(st, {EMLX, _, _}, value, safe, i) do
      refs = for {:cpu, r} <- List.wrap(value), is_reference(r), do: {:cpu, r}
      add_arrays(st, :d, refs, safe, i, fn {:cpu, r} -> r end)
    end

    defp check(st, _, _, _, _), do: {:ok, st}

    # A segment made by to_pointer(..., :ipc, ...) is removed at once.
    defp unlink(name), do: NIF.shm_unlink(name) == :ok

    # Nx may return an input as it is (a no-op transpose of a deallocated
    # tensor, say): only new tensors are checked. Nx has no empty or
    # negative dimensions; where its own shape checks let one through, the
    # call is noted, not failed (EMLX is not at fault).
    defp check_nx(st, call, value, resolved, safe, i) do
      inputs = resolved |> tensors_in() |> MapSet.new(&nx_ref/1)
      tensors = value |> tensors_in() |> Enum.reject(&MapSet.member?(inputs, nx_ref(&1)))

      {tensors, odd} =
        Enum.split_with(tensors, fn t -> Enum.all?(Tuple.to_list(t.shape), &(&1 > 0)) end)

      st = if odd == [], do: st, else: note(st, :nx_shape_with_dimension_below_1, call)

      case Enum.find(tensors, &(not well_formed?(&1))) do
        nil ->
          add_arrays(st, :t, tensors, safe, i, &nx_ref/1)

        bad ->
          {:invalid, {:tensor, bad.shape, bad.type, Worker.info(nx_ref(bad))}}
      end
    end

    defp note(st, key, call) do
      notes = Map.update(st.notes, key, {1, describe(call)}, fn {n, e} -> {n + 1, e} end)
      %{st | notes: notes}
    end

    defp tensors_in(%Nx.Tensor{data: %EMLX.Backend{}} = t), do: [t]
    defp tensors_in([h | t]), do: tensors_in(h) ++ tensors_in(t)
    defp tensors_in(tuple) when is_tuple(tuple), do: tensors_in(Tuple.to_list(tuple))
    defp tensors_in(_), do: []

    defp nx_ref(%Nx.Tensor{data: %EMLX.Backend{ref: ref}}), do: ref

    # The tensor's Nx shape and type agree with the MLX array under it.
    defp well_formed?(%Nx.Tensor{shape: shape, type: type, vectorized_axes: []} = t) do
      case Worker.info(nx_ref(t)) do
        {^shape, ^type, _} -> true
        {^shape, :bool, _} -> type == {:u, 8}
        _ -> false
      end
    end

    defp well_formed?(_), do: true

    # New arrays join the dynamic pool: their shape is read (waiting for the
    # worker) and, when small and safe, they are read back. An op's MLX
    # error surfaces at the first read of its result
    # (EMLX.NIFError, or ArgumentError for the shim's own checks): a valid
    # outcome, and the failed array joins the pool too.
    defp add_arrays(st, family, items, safe, i, to_ref) do
      items
      |> Enum.with_index()
      |> Enum.reduce_while({:ok, st}, fn {item, k}, {:ok, st} ->
        label = if k == 0, do: {:r, i}, else: {:r, i, k}

        case read_array(to_ref.(item), safe) do
          {:ok, meta} ->
            {:cont, {:ok, pool_put(st, family, label, item, meta)}}

          {:raised, module} ->
            meta = %{safe: true, shape: nil, queue: :dyn}
            {:halt, {:raised_at_read, module, pool_put(st, family, label, item, meta)}}

          {:invalid, why} ->
            {:halt, {:invalid, why}}
        end
      end)
    end

    defp read_array(ref, safe) do
      {shape, type, owner} = Worker.info(ref)
      dims = Tuple.to_list(shape)
      small = Enum.all?(dims, &(&1 >= 0)) and Enum.product(dims) <= @limit_elems
      # keeps results (stack, dot, take...) of pool arrays within 32 dimensions
      safe = safe and small and length(dims) <= 16

      if safe do
        bin = NIF.to_binary(owner, ref, 1_099_511_627_776) |> Worker.await()

        if byte_size(bin) == Enum.product(dims) * div(type_bits(type), 8),
          do: {:ok, %{safe: true, shape: shape, queue: :dyn}},
          else: {:invalid, {:readback, shape, type, byte_size(bin)}}
      else
        {:ok, %{safe: false, shape: shape, queue: :dyn}}
      end
    rescue
      e in [EMLX.NIFError, ArgumentError] -> {:raised, e.__struct__}
    end

    defp pool_put(st, family, label, item, meta) do
      dyn = Map.put(st.dyn[family], label, {item, meta})
      dyn = if map_size(dyn) > @dyn_size, do: Map.delete(dyn, Enum.min(Map.keys(dyn))), else: dyn
      put_in(st.dyn[family], dyn)
    end
  end

  ## The tests

  test "a storm of bad calls raises or returns, and never brings the VM down" do
    seed = env_int("EMLX_FUZZ_SEED", 20_240_611)
    n = env_int("EMLX_FUZZ_CALLS", 12_000)
    parent = self()
    progress = :atomics.new(1, [])

    {pid, mon} =
      spawn_monitor(fn ->
        log =
          case System.get_env("EMLX_FUZZ_LOG") do
            nil -> nil
            path -> File.open!(path, [:write, :raw, :binary])
          end

        st = Storm.new(seed)

        st =
          Enum.reduce(1..n, st, fn i, st ->
            :atomics.put(progress, 1, i)
            Storm.step(st, i, log)
          end)

        send(
          parent,
          {:storm,
           Map.take(st, [:calls, :counts, :skipped, :invalid, :examples, :notes, :by_fun, :former])}
        )
      end)

    result = watch(pid, mon, progress, -1)
    IO.puts("\nfuzz (seed #{seed}): #{result.calls} calls")

    by_fun =
      result.by_fun
      |> Enum.sort_by(fn {{m, f}, _} -> {inspect(m), f} end)
      |> Enum.map_join(", ", fn {{m, f}, c} -> "#{inspect(m)}.#{f} #{c}" end)

    IO.puts("  calls by function: #{by_fun}")
    IO.puts("  outcomes:")

    for {kind, c} <- Enum.sort_by(result.counts, &(-elem(&1, 1))) do
      example = if e = result.examples[kind], do: "  e.g. #{String.slice(e, 0, 160)}", else: ""
      IO.puts("  #{inspect(kind)}: #{c}#{example}")
    end

    for {id, c} <- result.skipped, do: IO.puts("  skipped (known crash #{id}): #{c}")

    former = Enum.map_join(Enum.sort(result.former), ", ", fn {id, c} -> "#{id} #{c}" end)
    IO.puts("  formerly crashing calls run: #{former}")

    for {key, {c, e}} <- result.notes,
        do: IO.puts("  note: #{key}: #{c}, e.g. #{String.slice(e, 0, 160)}")

    assert result.calls >= 10_000
    assert Enum.sum(Map.values(result.counts)) + Enum.sum(Map.values(result.skipped)) == n
    assert result.invalid == [], "invalid outcomes:\n#{inspect(result.invalid, pretty: true)}"
    assert Map.keys(result.skipped) -- Map.keys(@known_crashes) == []
    # the classes of call that once crashed the VM are still in the storm
    assert Enum.sum(Map.values(result.former)) > 100
    assert result.counts[:ok] > 1000
    assert result.counts[ArgumentError] > 1000
    # MLX's own errors: raised by the call, or (ops return pending arrays) by the first read
    assert (result.counts[EMLX.NIFError] || 0) +
             (result.counts[{:raised_at_first_read, EMLX.NIFError}] || 0) > 100

    # The VM, the default queue and MLX still compute correctly.
    assert_same(fn a, b -> Nx.dot(a, b) |> Nx.add(1) end, [
      Nx.iota({4, 5}, type: :f32),
      Nx.iota({5, 3}, type: :f32)
    ])

    assert_same(&Nx.sum(&1, axes: [1]), [Nx.iota({3, 4}, type: :s64)])
    assert_same(&Nx.cumulative_sum(&1, axis: 0), [Nx.tensor([1, 2, 3], type: :u8)])
    assert Nx.to_list(Nx.add(emlx([1, 2]), emlx([3, 4]))) == [4, 6]
    q = EMLX.CommandQueue.new!(:cpu)

    assert EMLX.CommandQueue.with_queue(q, fn -> Nx.sum(emlx([1.5, 2.5])) |> Nx.to_number() end) ==
             4.0
  end

  # Waits for the storm; fails if no call completes for two minutes (a hang).
  defp watch(pid, mon, progress, last) do
    receive do
      {:storm, result} ->
        Process.demonitor(mon, [:flush])
        result

      {:DOWN, ^mon, :process, ^pid, reason} ->
        flunk("the storm process died: #{inspect(reason)}")
    after
      120_000 ->
        now = :atomics.get(progress, 1)

        if now == last do
          Process.exit(pid, :kill)
          flunk("call #{now} hung (rerun with EMLX_FUZZ_LOG=file to see it)")
        end

        watch(pid, mon, progress, now)
    end
  end

  defp env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      v -> String.to_integer(v)
    end
  end
end
