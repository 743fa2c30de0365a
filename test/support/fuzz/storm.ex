defmodule EMLX.Fuzz.Storm do
  @moduledoc false
  # The fuzz storm of test/emlx/fuzz_test.exs: the pool of arrays and the
  # runner. A call (drawn by EMLX.Fuzz.Gen) is `{module, function, args}`
  # where args may hold placeholders: `{:"$a", label}` (a NIF array ref),
  # `{:"$t", label}` (an Nx tensor), `{:"$d", label}` (a device ref),
  # `:"$q"` and `:"$q2"` (command queues). Labels name fixed pool entries
  # (atoms) or earlier results (`{:r, call_index}`). Calls of a known crash
  # class (EMLX.Fuzz.Crashes) are counted, or skipped while still listed.

  import EMLX.Fuzz.Values
  alias EMLX.{NIF, Worker}
  alias EMLX.Fuzz.{Crashes, Gen}

  @limit_elems 4096
  @limit_int 1024
  @dyn_size 48

  ## The pool

  def new(seed) do
    :rand.seed(:exsss, {seed, 0x5EED, 0xF022})
    q = EMLX.Application.default_worker(EMLX.Case.device())
    {:ok, q2} = NIF.queue_new(EMLX.Case.device(), -1)

    arr = fn data, type, shape ->
      t = Nx.tensor(data, type: type, backend: Nx.BinaryBackend) |> Nx.reshape(shape)
      Worker.from_binary(q, Nx.to_binary(t), shape, type)
    end

    op = fn queue, name, args -> Worker.run_op(queue, name, args, nil) end
    f32x3 = arr.([1.5, -2.0, 3.25], {:f, 32}, {3})

    # {label, ref, meta}; meta: queue, whether it may be evaluated, whether it is usable as Nx tensor
    safe = [
      {:f32_2x3, arr.([0.0, 1.0, -2.5, 3.0, :nan, :infinity], {:f, 32}, {2, 3})},
      {:f32_3, f32x3},
      {:f32_0, Worker.from_binary(q, <<>>, {0}, {:f, 32})},
      {:f32_3x0, Worker.from_binary(q, <<>>, {3, 0}, {:f, 32})},
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

    # made, then computed: its queue drained
    q2_avail = Worker.from_binary(q2, <<1.0::float-32-native>>, {1}, {:f, 32})
    :ok = q2 |> NIF.queue_drain() |> Worker.await()

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
        {l, EMLX.Backend.to_nx({EMLX.Case.device(), r}), m}
      end

    dead_t = Nx.tensor([1.0, 2.0], backend: EMLX.Backend)
    Nx.backend_deallocate(dead_t)
    q2_t = EMLX.Backend.to_nx({EMLX.Case.device(), q2_avail})

    nx_fixed =
      nx_fixed ++
        [
          {:nx_deallocated, dead_t, %{queue: :q, safe: true, shape: {2}}},
          {:nx_q2, q2_t, meta.(q2_avail, :q2, true)},
          {:nx_binary_backend, Nx.tensor([[1, 2], [3, 4]], backend: Nx.BinaryBackend),
           %{queue: :binary, safe: true, shape: {2, 2}}}
        ]

    dev_fixed = for {l, r, m} <- nif_fixed, do: {l, {EMLX.Case.device(), r}, m}

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
    call = Gen.gen(st)
    {mod, fun, args} = call
    known = if st.run_known, do: nil, else: Crashes.known_crash(st, call)

    if log,
      do: :ok = IO.binwrite(log, "#{i} #{if known, do: "SKIP ", else: ""}#{describe(call)}\n")

    st = %{st | by_fun: Map.update(st.by_fun, {mod, fun}, 1, &(&1 + 1))}
    class = if known, do: nil, else: Crashes.crash_class(st, call)
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
  # (from_binary's array comes back at once, made or pending, or
  # {:wait, array} past the backpressure depth)
  defp await({:wait, value}, NIF, :from_binary, _), do: value
  defp await(value, NIF, :from_binary, _), do: value

  defp await(ref, NIF, fun, _)
       when fun in [:to_binary, :eval, :queue_sync, :to_pointer, :from_pointer],
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

  defp check(st, {Gen, :program, _}, value, safe, i) do
    if is_list(value) and Enum.all?(value, &is_reference/1),
      do: add_arrays(st, :a, value, safe, i, & &1),
      else: {:invalid, {:not_arrays, value}}
  end

  defp check(st, {EMLX, _, _}, value, safe, i) do
    dev = EMLX.Case.device()
    refs = for {^dev, r} <- List.wrap(value), is_reference(r), do: {dev, r}
    add_arrays(st, :d, refs, safe, i, fn {^dev, r} -> r end)
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

  # The tensor's Nx shape and type agree with the MLX array under it; a
  # type MLX lacks is a uint8 vector of its Nx binary's bytes.
  defp well_formed?(%Nx.Tensor{shape: shape, type: type, vectorized_axes: []} = t)
       when type in [{:c, 128}, {:f, 8}, {:f8_e4m3fn, 8}, {:u, 2}, {:u, 4}, {:s, 2}, {:s, 4}] do
    bytes = div(Tuple.product(shape) * elem(type, 1) + 7, 8)
    match?({{^bytes}, {:u, 8}, _}, Worker.info(nx_ref(t)))
  end

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

  defp sync(st) do
    for q <- [st.q, st.q2], do: :ok = q |> NIF.queue_sync() |> Worker.await()
    st
  end
end
