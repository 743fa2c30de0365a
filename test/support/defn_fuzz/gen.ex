defmodule EMLX.DefnFuzz.Gen do
  @moduledoc """
  Random `defn` programs as plain data, for `EMLX.DefnFuzz`.

  A program is `%{inputs: [{type, shape}], steps: [step], out: out}`. Each
  step makes one value (a `{:grad, ...}` step two) from earlier values,
  named by their index: the inputs are values `0..n-1`, the steps' results
  follow in order. `EMLX.DefnFuzz.Interp` turns a program into Nx calls.

  The generator tracks each value's shape, type and whether it is *exact*:
  a value computed without rounding from the inputs (copies, permutations,
  max/min, negation). Ops with a discrete result (comparisons, argmax,
  floor, integer casts) only take exact values, so that EMLX and Nx's
  evaluator, which round in different orders, never disagree on a near-tie.
  Floats stay bounded: exp takes clipped arguments, divisions divide by
  `1.5 + |b|`, loop bodies end in tanh.

  Generation uses `:rand` in `:exsss` mode seeded from the program's seed,
  so a program reproduces from its seed alone.
  """

  @unary_smooth ~w(negate tanh sin cos sigmoid exp log rsqrt erf atan square expm1)a
  @unary_float @unary_smooth ++ ~w(abs sqrt log1p cbrt)a
  @unary_exact_float ~w(floor ceil round sign)a
  @binary_float ~w(add subtract multiply divide max min atan2 pow)a
  @binary_smooth ~w(add subtract multiply divide)a
  @binary_int ~w(add subtract multiply max min bitwise_and bitwise_or bitwise_xor remainder quotient left_shift right_shift)a
  @ints [{:s, 8}, {:u, 8}, {:s, 16}, {:u, 16}, {:s, 32}, {:u, 32}, {:s, 64}]

  @doc "The program of `seed`."
  def program(seed) do
    :rand.seed(:exsss, {seed, 17, 4242})

    float =
      case :rand.uniform(12) do
        r when r <= 2 -> {:f, 64}
        3 -> {:f, 16}
        4 -> {:bf, 16}
        _ -> {:f, 32}
      end

    n_in = Enum.random(1..4)

    inputs =
      for _ <- 1..n_in do
        type = if :rand.uniform(4) == 1, do: Enum.random(@ints), else: float
        {type, random_shape()}
      end

    vals = Enum.map(inputs, fn {t, s} -> %{t: t, s: s, x: true} end)
    st = %{vals: vals, steps: [], float: float}
    st = Enum.reduce(1..Enum.random(3..14), st, fn _, st -> add_step(st) end)
    %{inputs: inputs, steps: Enum.reverse(st.steps), out: outputs(st), float: float}
  end

  defp outputs(%{vals: vals}) do
    n = length(vals)
    # mostly the newest values, sometimes an input returned as it is
    picks = Enum.uniq(for _ <- 1..Enum.random(1..3), do: n - Enum.random(1..min(n, 4)))

    case Enum.random([:single, :tuple, :map, :nested]) do
      :single -> {:single, hd(picks)}
      :tuple -> {:tuple, picks}
      :map -> {:map, picks}
      :nested -> {:nested, picks}
    end
  end

  defp random_shape do
    rank = Enum.random([0, 1, 1, 2, 2, 2, 3, 3])
    List.to_tuple(for _ <- List.duplicate(0, rank), do: Enum.random(1..5))
  end

  defp add_step(st) do
    kind =
      Enum.random(
        ~w(unary unary binary binary binary reduce shape shape dot select cast cumulative
           pattern window take const cond while grad sort hook random dynamic put_slice
           indexed gather conv batched_dot custom_reduce linalg fft extra extra)a
      )

    with {step, vals} <- step(kind, st),
         {:ok, traced} <- EMLX.DefnFuzz.Interp.result_types(step, st.vals) do
      # the types and shapes Nx gives (the generator's own are a guess)
      vals = Enum.zip_with(vals, traced, fn v, {t, s} -> %{v | t: t, s: s} end)
      %{st | steps: [step | st.steps], vals: st.vals ++ vals}
    else
      _ -> add_step(st)
    end
  end

  @doc false
  # a random value of the state that passes filter, as {index, value}; nil when none
  def pick(st, filter) do
    case for({v, i} <- Enum.with_index(st.vals), filter.(v), do: {i, v}) do
      [] -> nil
      list -> Enum.random(list)
    end
  end

  @doc false
  def float?(%{t: {k, _}}), do: k in [:f, :bf]
  @doc false
  def int?(%{t: {k, _}}), do: k in [:s, :u]
  @doc false
  def complex?(%{t: {k, _}}), do: k == :c

  # -- element-wise --

  defp step(:unary, st) do
    case pick(st, fn _ -> true end) do
      {i, %{t: {k, _}, x: true} = v} when k in [:f, :bf] ->
        name = Enum.random(@unary_float ++ @unary_exact_float)
        {{:unary, name, i}, [%{v | x: name in [:negate, :abs | @unary_exact_float]}]}

      {i, %{t: {k, _}} = v} when k in [:f, :bf] ->
        name = Enum.random(@unary_float)
        {{:unary, name, i}, [%{v | x: v.x and name in [:negate, :abs]}]}

      {i, %{t: {:c, _}} = v} ->
        {{:unary, Enum.random([:negate, :conjugate, :real, :imag, :abs]), i}, [%{v | x: false}]}

      {i, v} ->
        ops = [:negate, :abs, :sign, :bitwise_not, :count_leading_zeros, :population_count]

        case Enum.random([:to_float, :to_int | ops]) do
          :to_float -> {{:as_type, i, st.float}, [%{v | t: st.float}]}
          :to_int -> {{:as_type, i, Enum.random(@ints)}, [v]}
          name -> {{:unary, name, i}, [v]}
        end
    end
  end

  defp step(:binary, st) do
    {i, a} = pick(st, fn _ -> true end)

    # (of mixed types too: Nx promotes, u8 with s8 to s16, s64 with f32 to f32)
    case pick(st, &(broadcastable?(&1, a.s) and (int?(&1) == int?(a) or :rand.uniform(3) == 1))) do
      {j, b} ->
        {name, exact} =
          cond do
            int?(a) and int?(b) ->
              {Enum.random(@binary_int), true}

            complex?(a) or complex?(b) ->
              {Enum.random([:add, :subtract, :multiply]), false}

            true ->
              (fn n -> {n, n in [:max, :min] and a.x and b.x} end).(Enum.random(@binary_float))
          end

        {{:binary, name, i, j}, [%{t: a.t, s: a.s, x: exact}]}

      nil ->
        nil
    end
  end

  defp step(:reduce, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)) do
      axes = random_axes(v.s)
      keep = :rand.uniform(2) == 1

      if v.x and :rand.uniform(3) == 1 do
        axis = Enum.random(axes_of(v.s))
        name = Enum.random([:argmax, :argmin])
        tie = Enum.random([:low, :high])

        {{:arg, name, i, axis, keep, tie},
         [%{t: {:s, 32}, s: reduced(v.s, [axis], keep), x: true}]}
      else
        names =
          if float?(v),
            do: ~w(sum mean reduce_max reduce_min product)a,
            else: ~w(sum reduce_max reduce_min)a

        name = Enum.random(names)
        t = if name == :mean, do: st.float, else: v.t
        exact = v.x and name in [:reduce_max, :reduce_min]
        {{:reduce, name, i, axes, keep}, [%{t: t, s: reduced(v.s, axes, keep), x: exact}]}
      end
    end
  end

  defp step(:shape, st) do
    {i, v} = pick(st, fn _ -> true end)
    r = tuple_size(v.s)
    dims = Tuple.to_list(v.s)

    case Enum.random(~w(transpose reshape slice reverse concat pad new_axis broadcast squeeze)a) do
      :transpose when r > 1 ->
        perm = Enum.shuffle(0..(r - 1))
        {{:transpose, i, perm}, [%{v | s: List.to_tuple(Enum.map(perm, &elem(v.s, &1)))}]}

      :reshape ->
        size = Enum.product(dims)
        s = Enum.random([{size}, List.to_tuple(Enum.reverse(dims)), List.to_tuple([1 | dims])])
        {{:reshape, i, s}, [%{v | s: s}]}

      :slice when r > 0 ->
        starts = Enum.map(dims, &Enum.random(0..(&1 - 1)))
        lengths = Enum.zip_with(dims, starts, fn d, s -> Enum.random(1..(d - s)) end)
        strides = Enum.map(lengths, &Enum.random(1..max(&1, 1)))
        s = Enum.zip_with(lengths, strides, &div(&1 + &2 - 1, &2))
        {{:slice, i, starts, lengths, strides}, [%{v | s: List.to_tuple(s)}]}

      :reverse when r > 0 ->
        {{:reverse, i, random_axes(v.s)}, [v]}

      :concat when r > 0 ->
        axis = Enum.random(0..(r - 1))

        case pick(st, &(&1.t == v.t and same_but(&1.s, v.s, axis))) do
          {j, w} ->
            {{:concat, [i, j], axis},
             [%{v | s: put_elem(v.s, axis, elem(v.s, axis) + elem(w.s, axis)), x: v.x and w.x}]}

          nil ->
            nil
        end

      :pad when r > 0 ->
        config =
          Enum.map(dims, fn _ -> {Enum.random(-1..2), Enum.random(-1..2), Enum.random(0..1)} end)

        s =
          Enum.zip_with(dims, config, fn d, {lo, hi, int} -> d + lo + hi + max(d - 1, 0) * int end)

        if Enum.all?(s, &(&1 > 0)),
          do: {{:pad, i, config}, [%{v | s: List.to_tuple(s)}]},
          else: nil

      :new_axis ->
        axis = Enum.random(0..r)
        {{:new_axis, i, axis}, [%{v | s: Tuple.insert_at(v.s, axis, 1)}]}

      # (not of a broadcast: Nx 0.13.1's Expr.broadcast merges two nested
      # broadcasts that add leading axes with the inner axes unshifted,
      # an invalid node that Nx.BinaryBackend and EMLX both reject)
      :broadcast when r < 4 and not is_map_key(v, :bc) ->
        extra = Enum.random(1..3)
        s = List.to_tuple([extra | dims])
        {{:broadcast, i, s}, [Map.put(%{v | s: s}, :bc, true)]}

      :squeeze ->
        ones = for {1, a} <- Enum.with_index(dims), do: a

        if ones == [],
          do: nil,
          else:
            {{:squeeze, i, ones},
             [%{v | s: List.to_tuple(dims -- List.duplicate(1, length(ones)))}]}

      _ ->
        nil
    end
  end

  defp step(:dot, st) do
    pairs =
      for {a, i} <- Enum.with_index(st.vals),
          {b, j} <- Enum.with_index(st.vals),
          a.t == b.t,
          float?(a),
          x <- axes_of(a.s),
          y <- axes_of(b.s),
          elem(a.s, x) == elem(b.s, y),
          tuple_size(a.s) + tuple_size(b.s) <= 5,
          do: {i, x, j, y, a, b}

    case pairs do
      [] ->
        nil

      _ ->
        {i, x, j, y, a, b} = Enum.random(pairs)
        s = List.to_tuple(drop_at(a.s, x) ++ drop_at(b.s, y))
        {{:dot, i, [x], j, [y]}, [%{t: a.t, s: s, x: false}]}
    end
  end

  defp step(:select, st) do
    with {i, a} <- pick(st, & &1.x),
         {j, _} <- pick(st, &(&1.x and &1.t == a.t and broadcastable?(&1, a.s))),
         {k, c} <- pick(st, &broadcastable?(&1, a.s)),
         {l, d} <- pick(st, &(&1.t == c.t and broadcastable?(&1, a.s))) do
      cmp = Enum.random(~w(greater less greater_equal less_equal equal not_equal)a)
      {{:select, cmp, i, j, k, l}, [%{t: c.t, s: a.s, x: c.x and d.x}]}
    end
  end

  defp step(:cast, st) do
    {i, v} = pick(st, fn _ -> true end)

    cond do
      int?(v) -> {{:as_type, i, st.float}, [%{v | t: st.float}]}
      v.x -> {{:as_type, i, {:s, 32}}, [%{v | t: {:s, 32}}]}
      true -> nil
    end
  end

  defp step(:cumulative, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)) do
      name = Enum.random(~w(cumulative_sum cumulative_max cumulative_min cumulative_product)a)
      axis = Enum.random(0..(tuple_size(v.s) - 1))

      {{:cumulative, name, i, axis, :rand.uniform(2) == 1},
       [%{v | x: v.x and name in [:cumulative_max, :cumulative_min]}]}
    end
  end

  # the patterns EMLX's compiler rewrites into fused kernels
  defp step(:pattern, st) do
    with {i, v} <- pick(st, &(float?(&1) and tuple_size(&1.s) > 0)) do
      axis = tuple_size(v.s) - 1

      case Enum.random(~w(softmax log_softmax logsumexp layer_norm rms_norm)a) do
        :logsumexp ->
          {{:pattern, :logsumexp, i, axis}, [%{v | s: reduced(v.s, [axis], true), x: false}]}

        name ->
          {{:pattern, name, i, axis}, [%{v | x: false}]}
      end
    end
  end

  defp step(:window, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) in 1..3)) do
      window = Enum.map(Tuple.to_list(v.s), &Enum.random(1..min(&1, 3)))

      name =
        if float?(v),
          do: Enum.random(~w(window_sum window_max window_min window_mean)a),
          else: :window_max

      padding = Enum.random([:valid, :same])
      strides = Enum.map(window, fn _ -> Enum.random(1..2) end)
      t = if name == :window_mean, do: st.float, else: v.t

      s =
        Enum.zip_with([Tuple.to_list(v.s), window, strides], fn [d, w, k] ->
          if padding == :valid, do: div(d - w, k) + 1, else: div(d + k - 1, k)
        end)

      {{:window, name, i, List.to_tuple(window), strides, padding},
       [%{t: t, s: List.to_tuple(s), x: v.x and name in [:window_max, :window_min]}]}
    end
  end

  defp step(:take, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)) do
      axis = Enum.random(0..(tuple_size(v.s) - 1))
      idx = for _ <- 1..Enum.random(1..4), do: Enum.random(0..(elem(v.s, axis) - 1))
      {{:take, i, idx, axis}, [%{v | s: put_elem(v.s, axis, length(idx))}]}
    end
  end

  defp step(:const, st) do
    {i, v} = pick(st, fn _ -> true end)
    c = if int?(v), do: Enum.random(-3..3), else: Enum.random([0.5, -1.25, 2.0, 0.1])

    case Enum.random([:scalar, :iota]) do
      :scalar -> {{:const_op, i, c}, [%{v | x: int?(v)}]}
      :iota -> {{:iota_op, i}, [%{v | x: int?(v)}]}
    end
  end

  defp step(:sort, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0 and float?(&1))) do
      axis = Enum.random(0..(tuple_size(v.s) - 1))
      {{:sort, i, axis, Enum.random([:asc, :desc])}, [v]}
    end
  end

  # a hook: the value goes to the caller as the program runs, and on unchanged
  defp step(:hook, st) do
    {i, v} = pick(st, fn _ -> true end)
    {{:hook, i, length(st.vals)}, [v]}
  end

  # Nx.Random's threefry: integer and bit ops, exact on both sides
  defp step(:random, st) do
    {i, v} = pick(st, fn _ -> true end)
    {{:random, i, :rand.uniform(1000)}, [%{v | x: int?(v)}]}
  end

  # a slice whose start is computed (Nx clamps it into range)
  defp step(:dynamic, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)),
         {j, _} <- pick(st, & &1.x) do
      lengths = Enum.map(Tuple.to_list(v.s), &Enum.random(1..&1))
      {{:dynamic_slice, i, j, lengths}, [%{v | s: List.to_tuple(lengths)}]}
    end
  end

  defp step(:put_slice, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)),
         {j, w} <- pick(st, &fits?(&1, v)),
         {k, _} <- pick(st, & &1.x) do
      starts = Enum.map(Tuple.to_list(v.s), fn _ -> Enum.random([:static, :dynamic]) end)

      starts =
        Enum.map(starts, fn
          :static -> Enum.random(0..4)
          :dynamic -> {:from, k}
        end)

      {{:put_slice, i, starts, j}, [%{v | x: v.x and w.x}]}
    end
  end

  defp step(:indexed, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)) do
      n = Enum.random(1..5)
      idx = for _ <- 1..n, do: Enum.map(Tuple.to_list(v.s), &Enum.random(0..(&1 - 1)))
      upd = for _ <- 1..n, do: if(int?(v), do: Enum.random(-5..5), else: Enum.random(-8..8) / 4)
      name = Enum.random([:indexed_add, :indexed_put])
      # (indexed_put with a repeated index keeps one update, backend-chosen)
      idx = if name == :indexed_put, do: Enum.uniq(idx), else: idx
      upd = Enum.take(upd, length(idx))
      {{:indexed, name, i, idx, upd}, [%{v | x: v.x and name == :indexed_put}]}
    end
  end

  defp step(:gather, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)) do
      idx =
        for _ <- 1..Enum.random(1..4), do: Enum.map(Tuple.to_list(v.s), &Enum.random(0..(&1 - 1)))

      {{:gather, i, idx}, [%{v | s: {length(idx)}}]}
    end
  end

  defp step(:conv, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) in [3, 4] and float?(&1))) do
      [n, c | spatial] = Tuple.to_list(v.s)
      groups = if c > 1 and :rand.uniform(3) == 1, do: c, else: 1
      o = groups * Enum.random(1..2)
      kernel = Enum.map(spatial, &Enum.random(1..min(&1, 3)))
      strides = Enum.map(spatial, fn _ -> Enum.random(1..2) end)
      padding = Enum.random([:valid, :same])

      out =
        Enum.zip_with([spatial, kernel, strides], fn [d, k, st] ->
          if padding == :valid, do: div(d - k, st) + 1, else: div(d + st - 1, st)
        end)

      kshape = List.to_tuple([o, div(c, groups) | kernel])

      {{:conv, i, kshape, strides, padding, groups},
       [%{v | s: List.to_tuple([n, o | out]), x: false}]}
    end
  end

  defp step(:batched_dot, st) do
    pairs =
      for {a, i} <- Enum.with_index(st.vals),
          {b, j} <- Enum.with_index(st.vals),
          a.t == b.t and float?(a),
          tuple_size(a.s) >= 2 and tuple_size(b.s) >= 2,
          elem(a.s, 0) == elem(b.s, 0),
          x <- 1..(tuple_size(a.s) - 1),
          y <- 1..(tuple_size(b.s) - 1),
          elem(a.s, x) == elem(b.s, y),
          do: {i, x, j, y, a, b}

    if pairs != [] do
      {i, x, j, y, a, b} = Enum.random(pairs)
      s = List.to_tuple([elem(a.s, 0) | tl(drop_at(a.s, x))] ++ tl(drop_at(b.s, y)))
      {{:batched_dot, i, x, j, y}, [%{t: a.t, s: s, x: false}]}
    end
  end

  defp step(:custom_reduce, st) do
    with {i, v} <- pick(st, &(tuple_size(&1.s) > 0)) do
      axes = random_axes(v.s)
      name = Enum.random([:max, :add])

      {{:custom_reduce, name, i, axes},
       [%{v | s: reduced(v.s, axes, false), x: v.x and name == :max}]}
    end
  end

  # linear algebra on a well-conditioned matrix made from a value (the
  # outer product of its first k entries plus k times the identity), with
  # results that are unique: a Cholesky factor, a solve, a determinant, an
  # inverse, a triangular solve, Q times R, sorted eigen- and singular values
  defp step(:linalg, st) do
    with {i, v} <- pick(st, &(&1.t in [{:f, 32}, {:f, 64}] and tuple_size(&1.s) > 0)) do
      k = min(5, v.s |> Tuple.to_list() |> Enum.product())
      # (not svd in float64: Nx's own, the reference, is 1e-6 off there)
      names = ~w(cholesky solve determinant invert triangular_solve qr eigh)a
      name = Enum.random(if v.t == {:f, 64}, do: names, else: [:svd | names])
      {{:linalg, name, i, k}, [%{v | x: false}]}
    end
  end

  # an FFT of a real value along its last axis: complex values (c64 from
  # f32, c128 from f64, which EMLX emulates) for the steps that take them
  defp step(:extra, st), do: EMLX.DefnFuzz.Extra.step(st)

  defp step(:fft, st) do
    with {i, v} <- pick(st, &(&1.t in [{:f, 32}, {:f, 64}] and tuple_size(&1.s) > 0)) do
      {{:fft, Enum.random([:fft, :ifft]), i}, [%{v | t: Nx.Type.to_complex(v.t), x: false}]}
    end
  end

  # -- control flow and gradients: sub-programs over x and y of one shape --

  defp step(:cond, st) do
    with {p, _} <- pick(st, &(&1.x and float?(&1))),
         {i, x} <- pick(st, &(float?(&1) and &1.t == st.float)),
         {j, _} <- pick(st, &(&1.t == x.t and broadcastable?(&1, x.s))) do
      {{:cond, p, i, j, chain(:float, x.s), chain(:float, x.s)}, [%{x | x: false}]}
    end
  end

  defp step(:while, st) do
    with {i, x} <- pick(st, &(float?(&1) and &1.t == st.float)),
         {j, _} <- pick(st, &(&1.t == x.t and broadcastable?(&1, x.s))) do
      {{:while, i, j, Enum.random(1..4), chain(:loop, x.s)}, [%{x | x: false}]}
    end
  end

  defp step(:grad, st) do
    with {i, x} <- pick(st, &(float?(&1) and &1.t == st.float)),
         {j, _} <- pick(st, &(&1.t == x.t and broadcastable?(&1, x.s))) do
      {{:grad, i, j, chain(:smooth, x.s), :rand.uniform(2) == 1},
       [%{t: x.t, s: {}, x: false}, %{x | x: false}]}
    end
  end

  # A chain of steps over [x, y | earlier], each of x's shape: value 0 is
  # x, 1 is y. Element-wise steps, and (on x's shape, smooth ones) sums
  # broadcast back, reverses, cumulative sums, softmax and norms, a matmul
  # by a constant, window sums, shifts and permuting takes, so that
  # gradients flow through more than element-wise ops. Branches (:float)
  # and loop bodies (:loop) may hook a value; a loop body may branch on
  # its counter (a cond inside a while).
  defp chain(kind, shape) do
    {unary, binary} =
      if kind == :smooth, do: {@unary_smooth, @binary_smooth}, else: {@unary_float, @binary_float}

    {steps, _} =
      Enum.map_reduce(1..Enum.random(1..4), 2, fn _, n ->
        i = Enum.random(0..(n - 1))

        step =
          case :rand.uniform(12) do
            r when r <= 4 ->
              {:unary, Enum.random(unary), i}

            r when r <= 7 ->
              {:binary, Enum.random(binary), i, Enum.random(0..(n - 1))}

            r when r <= 9 and tuple_size(shape) > 0 ->
              shaped(i, shape)

            10 when kind != :smooth ->
              {:hook, i, 1000 + :rand.uniform(1_000_000)}

            11 when kind == :loop ->
              {:counter_cond, i, chain(:float, shape), chain(:float, shape)}

            _ ->
              {:unary, Enum.random(unary), i}
          end

        {step, n + 1}
      end)

    steps
  end

  # a differentiable step that keeps the shape
  defp shaped(i, shape) do
    r = tuple_size(shape)
    axis = Enum.random(0..(r - 1))
    last = r - 1

    case Enum.random(~w(rsum reverse cumsum pattern matmul window shift take)a) do
      :rsum ->
        {:rsum, i, axis}

      :reverse ->
        {:reverse, i, [axis]}

      :cumsum ->
        {:cumulative, :cumulative_sum, i, axis, :rand.uniform(2) == 1}

      :pattern ->
        {:pattern, Enum.random([:softmax, :log_softmax, :layer_norm, :rms_norm]), i, last}

      :matmul ->
        {:matmul_const, i, elem(shape, last)}

      :window ->
        {:window, :window_sum, i,
         put_elem(Tuple.duplicate(1, r), axis, min(2, elem(shape, axis))), List.duplicate(1, r),
         :same}

      :shift ->
        {:shift, i, axis}

      :take ->
        {:take, i, Enum.shuffle(0..(elem(shape, axis) - 1)), axis}
    end
  end

  # -- shapes --

  defp axes_of(s), do: if(tuple_size(s) == 0, do: [], else: Enum.to_list(0..(tuple_size(s) - 1)))

  defp drop_at(s, x), do: s |> Tuple.to_list() |> List.delete_at(x)

  defp random_axes(s) do
    axes = Enum.filter(axes_of(s), fn _ -> :rand.uniform(2) == 1 end)
    if axes == [], do: [Enum.random(axes_of(s))], else: axes
  end

  defp reduced(s, axes, true), do: Enum.reduce(axes, s, &put_elem(&2, &1, 1))

  defp reduced(s, axes, false),
    do:
      s
      |> Tuple.to_list()
      |> Enum.with_index()
      |> Enum.reject(&(elem(&1, 1) in axes))
      |> Enum.map(&elem(&1, 0))
      |> List.to_tuple()

  # value v broadcasts to shape a (a broadcast's result only as it is: see :broadcast)
  defp broadcastable?(%{bc: true, s: s}, a), do: s == a
  defp broadcastable?(%{s: s}, a), do: broadcastable?(s, a)

  defp broadcastable?(b, a) do
    tuple_size(b) <= tuple_size(a) and
      Enum.all?(Enum.zip(Enum.reverse(Tuple.to_list(b)), Enum.reverse(Tuple.to_list(a))), fn {x,
                                                                                              y} ->
        x == y or x == 1
      end)
  end

  # w fits inside v (same type and rank, no larger on any axis)
  defp fits?(w, v),
    do:
      w.t == v.t and tuple_size(w.s) == tuple_size(v.s) and
        Enum.all?(Enum.zip(Tuple.to_list(w.s), Tuple.to_list(v.s)), fn {a, b} -> a <= b end)

  defp same_but(s, v, axis),
    do: tuple_size(s) == tuple_size(v) and Tuple.delete_at(s, axis) == Tuple.delete_at(v, axis)
end
