defmodule EMLX.DefnFuzz.Interp do
  @moduledoc """
  Runs an `EMLX.DefnFuzz.Gen` program as Nx calls. Called inside a traced
  function (`Nx.Defn.jit/2`), it builds the program's expression; its
  control flow and gradients go through the `defn`s below, whose
  sub-programs come as options.
  """
  import Nx.Defn

  @doc "The program's outputs for a container of inputs (a tuple or a map)."
  def run(%{steps: steps, out: out}, container) do
    inputs = Nx.Defn.Composite.flatten_list([container])
    vals = Enum.reduce(steps, List.to_tuple(inputs), &apply_step/2)
    output(out, vals)
  end

  @doc """
  The `{type, shape}` of each value `step` makes from values of the given
  types and shapes, as Nx traces it: `{:ok, list}`, or `:error` when Nx
  rejects the step.
  """
  def result_types(step, vals) do
    args = vals |> Enum.map(&Nx.template(&1.s, &1.t)) |> List.to_tuple()
    n = tuple_size(args)

    fun = fn args ->
      args |> then(&apply_step(step, &1)) |> Tuple.to_list() |> Enum.drop(n) |> List.to_tuple()
    end

    out = Nx.Defn.debug_expr_apply(fun, [args])
    {:ok, out |> Tuple.to_list() |> Enum.map(&{&1.type, &1.shape})}
  rescue
    # (Nx rejects a step some other way too: no min_finite for complex)
    _ -> :error
  end

  defp output({:single, i}, vals), do: elem(vals, i)
  defp output({:tuple, is}, vals), do: is |> Enum.map(&elem(vals, &1)) |> List.to_tuple()
  defp output({:map, is}, vals), do: Map.new(is, &{:"o#{&1}", elem(vals, &1)})

  defp output({:nested, [i | is]}, vals),
    do: {elem(vals, i), %{rest: output({:tuple, is}, vals)}}

  defp apply_step({:grad, i, j, chain, square}, vals) do
    {value, grad} = grad_prog(elem(vals, i), elem(vals, j), chain: chain, square: square)
    vals |> push(value) |> push(grad)
  end

  defp apply_step(step, vals), do: push(vals, op(step, vals))

  defp push(vals, v), do: Tuple.insert_at(vals, tuple_size(vals), v)

  defp op(step, v) when elem(step, 0) == :extra, do: EMLX.DefnFuzz.Extra.op(step, v)
  defp op({:unary, name, i}, v), do: unary(name, elem(v, i))
  defp op({:binary, name, i, j}, v), do: binary(name, elem(v, i), elem(v, j))

  defp op({:arg, name, i, axis, keep, tie}, v),
    do: apply(Nx, name, [elem(v, i), [axis: axis, keep_axis: keep, tie_break: tie]])

  defp op({:reduce, name, i, axes, keep}, v),
    do: apply(Nx, name, [elem(v, i), [axes: axes, keep_axes: keep]])

  defp op({:transpose, i, perm}, v), do: Nx.transpose(elem(v, i), axes: perm)
  defp op({:reshape, i, s}, v), do: Nx.reshape(elem(v, i), s)

  defp op({:slice, i, starts, lengths, strides}, v),
    do: Nx.slice(elem(v, i), starts, lengths, strides: strides)

  defp op({:reverse, i, axes}, v), do: Nx.reverse(elem(v, i), axes: axes)

  defp op({:concat, is, axis}, v),
    do: Nx.concatenate(Enum.map(is, &elem(v, &1)), axis: axis)

  defp op({:pad, i, config}, v) do
    t = elem(v, i)
    Nx.pad(t, Nx.tensor(0, type: t.type), config)
  end

  defp op({:new_axis, i, axis}, v), do: Nx.new_axis(elem(v, i), axis)
  defp op({:broadcast, i, s}, v), do: Nx.broadcast(elem(v, i), s)
  defp op({:squeeze, i, axes}, v), do: Nx.squeeze(elem(v, i), axes: axes)
  defp op({:dot, i, ca, j, cb}, v), do: Nx.dot(elem(v, i), ca, elem(v, j), cb)

  defp op({:select, cmp, i, j, k, l}, v) do
    a = elem(v, i)
    pred = apply(Nx, cmp, [a, elem(v, j)])
    Nx.select(pred, Nx.broadcast(elem(v, k), a.shape), Nx.broadcast(elem(v, l), a.shape))
  end

  defp op({:as_type, i, type}, v), do: Nx.as_type(elem(v, i), type)

  defp op({:cumulative, name, i, axis, reverse}, v),
    do: apply(Nx, name, [elem(v, i), [axis: axis, reverse: reverse]])

  defp op({:pattern, name, i, axis}, v), do: pattern(name, elem(v, i), axis)

  defp op({:window, name, i, window, strides, padding}, v),
    do: apply(Nx, name, [elem(v, i), window, [strides: strides, padding: padding]])

  defp op({:take, i, idx, axis}, v), do: Nx.take(elem(v, i), Nx.tensor(idx), axis: axis)

  defp op({:const_op, i, c}, v) do
    t = elem(v, i)
    Nx.add(t, Nx.broadcast(Nx.tensor(c, type: t.type), t.shape))
  end

  defp op({:iota_op, i}, v) do
    t = elem(v, i)
    Nx.multiply(t, Nx.iota(t.shape, type: t.type))
  end

  defp op({:sort, i, axis, dir}, v), do: Nx.sort(elem(v, i), axis: axis, direction: dir)

  defp op({:linalg, name, i, k}, v) do
    u = elem(v, i) |> Nx.flatten() |> Nx.slice([0], [k])
    a = Nx.add(Nx.outer(u, u), Nx.multiply(Nx.eye(k, type: u.type), k))
    linalg(name, a, u)
  end

  defp op({:fft, name, i}, v), do: apply(Nx, name, [elem(v, i)])

  # (the steps of chains that keep the shape)
  defp op({:rsum, i, axis}, v) do
    t = elem(v, i)
    Nx.broadcast(Nx.sum(t, axes: [axis], keep_axes: true), t.shape)
  end

  defp op({:matmul_const, i, d}, v) do
    t = elem(v, i)
    m = Nx.iota({d, d}, type: t.type) |> Nx.multiply(1.0 / (d * d)) |> Nx.subtract(0.4)
    Nx.dot(t, [Nx.rank(t) - 1], m, [0])
  end

  defp op({:shift, i, axis}, v) do
    t = elem(v, i)
    config = for a <- 0..(Nx.rank(t) - 1), do: if(a == axis, do: {1, -1, 0}, else: {0, 0, 0})
    Nx.pad(t, Nx.tensor(0, type: t.type), config)
  end

  defp op({:hook, i, k}, v) do
    pid = self()

    Nx.Defn.Kernel.hook(
      elem(v, i),
      &send(pid, {:fuzz_hook, k, Nx.backend_copy(&1, Nx.BinaryBackend)})
    )
  end

  defp op({:random, i, seed}, v) do
    t = elem(v, i)
    key = Nx.Random.key(seed)

    {r, _key} =
      case t.type do
        {:s, _} -> Nx.Random.randint(key, -5, 5, shape: t.shape, type: t.type)
        type -> Nx.Random.uniform(key, shape: t.shape, type: type)
      end

    Nx.add(t, r)
  end

  defp op({:dynamic_slice, i, j, lengths}, v) do
    t = elem(v, i)
    start = start_from(elem(v, j))
    Nx.slice(t, List.duplicate(start, Nx.rank(t)), lengths)
  end

  defp op({:put_slice, i, starts, j}, v) do
    starts =
      Enum.map(starts, fn
        {:from, k} -> start_from(elem(v, k))
        n -> n
      end)

    Nx.put_slice(elem(v, i), starts, elem(v, j))
  end

  defp op({:indexed, name, i, idx, upd}, v) do
    t = elem(v, i)
    apply(Nx, name, [t, Nx.tensor(idx), Nx.tensor(upd, type: t.type)])
  end

  defp op({:gather, i, idx}, v), do: Nx.gather(elem(v, i), Nx.tensor(idx))

  defp op({:conv, i, kshape, strides, padding, groups}, v) do
    t = elem(v, i)
    size = kshape |> Tuple.to_list() |> Enum.product()
    k = Nx.iota(kshape, type: t.type) |> Nx.multiply(2.0 / size) |> Nx.subtract(0.5)
    Nx.conv(t, k, strides: strides, padding: padding, feature_group_size: groups)
  end

  defp op({:batched_dot, i, x, j, y}, v), do: Nx.dot(elem(v, i), [x], [0], elem(v, j), [y], [0])

  defp op({:custom_reduce, :max, i, axes}, v) do
    t = elem(v, i)
    Nx.reduce(t, Nx.Constants.min_finite(t.type), [axes: axes], &Nx.max/2)
  end

  defp op({:custom_reduce, :add, i, axes}, v),
    do: Nx.reduce(elem(v, i), 0, [axes: axes], &Nx.add/2)

  defp op({:cond, p, i, j, a, b}, v),
    do: cond_prog(elem(v, p), elem(v, i), elem(v, j), a: a, b: b)

  defp op({:while, i, j, n, body}, v),
    do: while_prog(elem(v, i), elem(v, j), n: n, body: body)

  # a start index computed from a value (from all its entries when it is
  # vectorized: Nx takes no vectorized start)
  defp start_from(t),
    do: t |> Nx.devectorize() |> Nx.abs() |> Nx.reduce_max() |> Nx.as_type(:s32)

  defp linalg(:cholesky, a, _u), do: Nx.LinAlg.cholesky(a)
  defp linalg(:solve, a, u), do: Nx.LinAlg.solve(a, u)
  defp linalg(:determinant, a, _u), do: Nx.LinAlg.determinant(a)
  defp linalg(:invert, a, _u), do: Nx.LinAlg.invert(a)
  defp linalg(:triangular_solve, a, u), do: Nx.LinAlg.triangular_solve(Nx.LinAlg.cholesky(a), u)

  defp linalg(:qr, a, _u) do
    {q, r} = Nx.LinAlg.qr(a)
    Nx.dot(q, r)
  end

  # (Nx's Jacobi eigh stops once the off-diagonal entries are below :eps,
  # 1.0e-4 by default: with small ones it returns the diagonal, 1e-6 off
  # in a float64 program, where LAPACK is exact)
  defp linalg(:eigh, a, _u) do
    eps = if a.type == {:f, 64}, do: 1.0e-13, else: 1.0e-4
    a |> Nx.LinAlg.eigh(eps: eps) |> elem(0) |> Nx.sort()
  end

  defp linalg(:svd, a, _u), do: a |> Nx.LinAlg.svd() |> elem(1) |> Nx.sort()

  # -- element-wise, bounded --

  defp unary(:exp, x), do: Nx.exp(Nx.clip(x, -4, 4))
  # (the sine of a large argument is ill-conditioned: an ulp of x moves it
  # anywhere, so computed values would differ by more than rounding)
  defp unary(:sin, x), do: Nx.sin(Nx.clip(x, -8, 8))
  defp unary(:cos, x), do: Nx.cos(Nx.clip(x, -8, 8))
  defp unary(:expm1, x), do: Nx.expm1(Nx.clip(x, -3, 3))
  defp unary(:log, x), do: Nx.log(Nx.add(Nx.abs(x), 0.5))
  defp unary(:rsqrt, x), do: Nx.rsqrt(Nx.add(Nx.abs(x), 0.5))
  defp unary(:sqrt, x), do: Nx.sqrt(Nx.abs(x))
  defp unary(:log1p, x), do: Nx.log1p(Nx.abs(x))
  defp unary(:square, x), do: Nx.multiply(x, x)
  defp unary(name, x), do: apply(Nx, name, [x])

  defp binary(:divide, a, b), do: Nx.divide(a, Nx.add(Nx.abs(b), 1.5))
  # (not at b = 0: Nx.BinaryBackend's abs(-0.0) is -0.0, so atan2(-0.0,
  # abs(-0.0)) is -pi there and -0.0 on EMLX, as IEEE and numpy give)
  defp binary(:atan2, a, b), do: Nx.atan2(a, Nx.select(Nx.equal(b, 0), 0.125, b))
  defp binary(:pow, a, b), do: Nx.pow(Nx.add(Nx.abs(a), 0.5), Nx.clip(b, -2, 2))

  defp binary(name, a, b) when name in [:remainder, :quotient],
    do: apply(Nx, name, [a, Nx.add(Nx.abs(b), 1)])

  defp binary(name, a, b) when name in [:left_shift, :right_shift],
    do: apply(Nx, name, [a, Nx.clip(b, 0, 3)])

  defp binary(name, a, b), do: apply(Nx, name, [a, b])

  # -- the compositions EMLX's compiler rewrites into fused kernels --

  defp pattern(:softmax, x, axis) do
    e = Nx.exp(Nx.subtract(x, Nx.reduce_max(x, axes: [axis], keep_axes: true)))
    Nx.divide(e, Nx.sum(e, axes: [axis], keep_axes: true))
  end

  defp pattern(:log_softmax, x, axis) do
    s = Nx.subtract(x, Nx.reduce_max(x, axes: [axis], keep_axes: true))
    Nx.subtract(s, Nx.log(Nx.sum(Nx.exp(s), axes: [axis], keep_axes: true)))
  end

  defp pattern(:logsumexp, x, axis) do
    m = Nx.reduce_max(x, axes: [axis], keep_axes: true)
    Nx.add(m, Nx.log(Nx.sum(Nx.exp(Nx.subtract(x, m)), axes: [axis], keep_axes: true)))
  end

  defp pattern(:layer_norm, x, axis) do
    mean = Nx.mean(x, axes: [axis], keep_axes: true)
    var = Nx.mean(Nx.pow(Nx.subtract(x, mean), 2), axes: [axis], keep_axes: true)
    Nx.divide(Nx.subtract(x, mean), Nx.sqrt(Nx.add(var, 1.0e-5)))
  end

  defp pattern(:rms_norm, x, axis) do
    ms = Nx.mean(Nx.multiply(x, x), axes: [axis], keep_axes: true)
    Nx.multiply(x, Nx.rsqrt(Nx.add(ms, 1.0e-6)))
  end

  # -- control flow: chains over x and y (y broadcast to x's shape) --

  @doc false
  def chain(x, y, steps, counter \\ nil) do
    y = Nx.broadcast(y, x.shape)
    vals = Enum.reduce(steps, {x, y}, &chain_step(&1, &2, counter))
    elem(vals, tuple_size(vals) - 1)
  end

  defp chain_step({:counter_cond, i, a, b}, vals, counter),
    do: push(vals, counter_cond(elem(vals, i), elem(vals, 1), counter, a: a, b: b))

  defp chain_step(step, vals, _counter), do: apply_step(step, vals)

  defn cond_prog(p, x, y, opts \\ []) do
    if Nx.reduce_max(p) > 0.3 do
      branch(x, y, opts[:a])
    else
      branch(x, y, opts[:b])
    end
  end

  defn while_prog(x, y, opts \\ []) do
    {x, _y, _i} =
      while {x, y, i = 0}, i < opts[:n] do
        {body(x, y, i, opts[:body]), y, i + 1}
      end

    x
  end

  defn counter_cond(x, y, i, opts \\ []) do
    if rem(i, 2) == 0 do
      branch(x, y, opts[:a])
    else
      branch(x, y, opts[:b])
    end
  end

  defn grad_prog(x, y, opts \\ []) do
    value_and_grad(x, fn x -> objective(x, y, opts[:chain], opts[:square]) end)
  end

  deftransformp branch(x, y, steps), do: chain(x, y, steps)
  deftransformp body(x, y, i, steps), do: Nx.multiply(Nx.tanh(chain(x, y, steps, i)), 1.5)

  deftransformp objective(x, y, steps, square) do
    r = chain(x, y, steps)
    if square, do: Nx.sum(Nx.multiply(r, r)), else: Nx.sum(r)
  end
end
