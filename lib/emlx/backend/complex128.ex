defmodule EMLX.Backend.Complex128 do
  @moduledoc false
  # c128 on MLX, for the callbacks where float64 pairs give
  # Nx.BinaryBackend's answer (EMLX.Backend.Emulated runs every other c128
  # callback on the BEAM, at Nx.BinaryBackend's speed).
  #
  # A c128 tensor's storage is its Nx binary in a uint8 array (see
  # EMLX.Backend.Emulated): little-endian float64 pairs, real part first.
  # Viewed as float64 (MLX's view, no copy) and split along a last axis of
  # 2, it gives the real and imaginary parts as EMLX f64 tensors; a result
  # is stacked back and viewed as uint8, every NaN written as Nx writes one.
  # float64 on EMLX is IEEE double, as the BEAM's floats are, and glibc
  # serves MLX's float64 CPU kernels and the BEAM's :math alike, so these
  # give Nx.BinaryBackend's bits:
  #
  # * add, subtract, multiply and divide of two complex operands (c128
  #   with c128 or c64), part by part as Complex computes them, (a+bi)(c+di)
  #   as (ac - bd) + (bc + ad)i, a quotient as in quotient/4. A real operand (whose imaginary part Complex
  #   treats apart for infinities) goes to Nx.BinaryBackend.
  # * equal and not_equal of two complex operands, as Complex structs
  #   compare (a NaN part equals a NaN part).
  # * as_type to c128 from c64, floats and integers of up to 32 bits (x + 0i).
  # * negate, conjugate, real, imag; abs, exp, log, sqrt, sin and cos step
  #   by step as Complex's functions, down to the sign of a zero (Erlang's
  #   abs keeps -0.0; cos's -:math.sin(re) is 0.0 - sin(re) in OTP 25's
  #   compiled code; the tests would show another OTP's difference), the
  #   cases for infinities and NaN in Complex's order.
  # * reshape, squeeze, transpose, reverse, broadcast, slice, put_slice,
  #   concatenate, stack and select move whole elements, on a uint8 view of
  #   shape `shape ++ {16}` (an element's 16 bytes on a last axis the op
  #   leaves whole).
  #
  # With float64 rounding instead: dot is four float64 dots (BLAS on the
  # CPU), (A + iB)(C + iD) = (AC - BD) + i(AD + BC), of the operands' parts
  # (a real operand's imaginary part is zero), summed in BLAS's order where
  # Nx.BinaryBackend adds the products one by one: the last bits may differ,
  # sums of exact products do not (128x128: 3.1 s on the BEAM, 1.0 ms here,
  # bench/emulated_types.exs). sum adds the parts as EMLX's f64 sums do.
  #
  # Where a float overflows, Nx.BinaryBackend raises Erlang's ArithmeticError
  # (the BEAM's floats have no infinity); these give IEEE's infinity.
  #
  # Not while `compiler: EMLX` records (a defn with c128 is run by Nx's
  # evaluator; only a defn inlined into another's recording gets here), not
  # for vectorized tensors, and not past 2^27 elements (viewable?/1): those
  # take Nx.BinaryBackend's path.

  alias EMLX.Defn.Recorder
  alias Nx.Tensor, as: T

  @elementwise [:add, :subtract, :multiply, :divide]
  @unary [:negate, :conjugate, :exp, :log, :sqrt, :sin, :cos]
  @parts [:real, :imag, :abs]

  # one c128 tensor's elements moved (concatenate, stack and select have
  # clauses of their own)
  @movement [:reshape, :squeeze, :transpose, :reverse, :broadcast, :slice, :put_slice]

  @doc "Whether callback `name` with `args` (the out template first) runs here."
  def native?(name, [%T{} = out | args]) do
    inputs = tensors(args)

    Enum.all?([out | inputs], &(&1.vectorized_axes == [] and viewable?(&1))) and
      Enum.all?(inputs, &emlx?/1) and not Recorder.active?() and fits?(name, out, args)
  end

  def native?(_name, _args), do: false

  # The tensors among the arguments, in lists too (a concatenate's
  # operands, a slice's start indices).
  defp tensors(args) do
    Enum.flat_map(args, fn
      %T{} = t -> [t]
      list when is_list(list) -> Enum.filter(list, &is_struct(&1, T))
      _ -> []
    end)
  end

  # A c128 tensor's bytes as one uint8 axis: MLX's dimensions are 32-bit.
  # (Larger ones take Nx.BinaryBackend's path, which refuses them past
  # :emulated_max_bytes with a message that says so.)
  defp viewable?(%T{shape: shape}), do: Tuple.product(shape) * 16 < 2 ** 31

  defp emlx?(%T{data: %{__struct__: EMLX.Backend, quantization_config: nil}}), do: true
  defp emlx?(_), do: false

  defp fits?(name, %T{type: {:c, 128}}, [a, b]) when name in @elementwise,
    do: complex?(a) and complex?(b)

  defp fits?(name, %T{type: {:u, 8}}, [a, b]) when name in [:equal, :not_equal],
    do: complex?(a) and complex?(b)

  defp fits?(:as_type, %T{type: {:c, 128}}, [t]), do: exact_in_f64?(t)

  defp fits?(:sum, %T{type: {:c, 128}}, [%T{type: {:c, 128}}, _opts]), do: true
  defp fits?(name, %T{type: {:c, 128}}, [%T{type: {:c, 128}}]) when name in @unary, do: true
  defp fits?(name, %T{type: {:f, 64}}, [%T{type: {:c, 128}}]) when name in @parts, do: true

  defp fits?(:dot, %T{type: {:c, 128}}, [a, _, _, b, _, _]),
    do: exact_in_f64?(a) and exact_in_f64?(b)

  defp fits?(:select, %T{type: {:c, 128}}, [_pred, a, b]),
    do: match?(%T{type: {:c, 128}}, a) and match?(%T{type: {:c, 128}}, b)

  defp fits?(name, %T{type: {:c, 128}}, [%T{type: {:c, 128}} | rest]) when name in @movement,
    do: name != :put_slice or match?([_, %T{type: {:c, 128}}], rest)

  defp fits?(name, %T{type: {:c, 128}}, [list | _]) when name in [:concatenate, :stack],
    do: Enum.all?(list, &match?(%T{type: {:c, 128}}, &1))

  defp fits?(_name, _out, _args), do: false

  defp complex?(%T{type: {:c, _}}), do: true
  defp complex?(_), do: false

  # Types whose every value a float64 holds exactly.
  defp exact_in_f64?(%T{type: {:c, _}}), do: true
  defp exact_in_f64?(%T{type: {:f, _}}), do: true
  defp exact_in_f64?(%T{type: {:bf, 16}}), do: true
  defp exact_in_f64?(%T{type: {kind, bits}}) when kind in [:s, :u] and bits <= 32, do: true
  defp exact_in_f64?(_), do: false

  @doc "Runs callback `name` (see native?/2)."
  def run(name, [out, a, b]) when name in @elementwise do
    {ar, ai} = parts(a)
    {br, bi} = parts(b)

    case name do
      :add ->
        join(out, Nx.add(ar, br), Nx.add(ai, bi))

      :subtract ->
        join(out, Nx.subtract(ar, br), Nx.subtract(ai, bi))

      :multiply ->
        re = Nx.subtract(Nx.multiply(ar, br), Nx.multiply(ai, bi))
        join(out, re, Nx.add(Nx.multiply(ai, br), Nx.multiply(ar, bi)))

      :divide ->
        {re, im} = quotient(ar, ai, br, bi)
        join(out, re, im)
    end
  end

  # Nx.BinaryBackend compares two complex numbers as Complex structs with
  # ==: part by part, a NaN part (the atom :nan there) equal to a NaN part.
  def run(name, [out, a, b]) when name in [:equal, :not_equal] do
    {ar, ai} = parts(a)
    {br, bi} = parts(b)
    same = &Nx.logical_or(Nx.equal(&1, &2), Nx.logical_and(Nx.is_nan(&1), Nx.is_nan(&2)))
    eq = Nx.logical_and(same.(ar, br), same.(ai, bi))
    eq = if name == :equal, do: eq, else: Nx.logical_not(eq)
    result = eq |> Nx.broadcast(out.shape) |> Nx.as_type(:u8)
    %{out | data: result.data}
  end

  # Complex.exp/1: e^re (cos im + i sin im), with its cases for infinite
  # and NaN parts, checked in its order (the last select here is its first
  # clause). glibc's exp, cos and sin serve MLX's float64 CPU kernels and
  # the BEAM's :math alike: the same bits (checked over 20,000 values).
  # At re = +infinity and a finite im, Complex 0.6.0 gives infinity + i
  # (im's sign) infinity; its later code (what Nx 0.13's `~> 0.7` asks for,
  # and Nx's own non-finite tests expect) gives the signs of cos im and
  # sin im. EMLX follows the Complex it is compiled with.
  @exp_inf_by_angle Complex.exp(Complex.new(:infinity, 2.0)).re == :neg_infinity

  def run(:exp, [out, t]) do
    {re, im} = parts(t)
    {nan, inf} = {const(:nan, re), const(:infinity, re)}
    pos_inf = Nx.equal(re, inf)
    rho = Nx.exp(re)
    odd = non_finite(im)

    {r, i} =
      {Nx.multiply(rho, Nx.cos(im)), Nx.multiply(rho, Nx.sin(im))}
      |> pick(Nx.logical_or(odd, Nx.is_nan(re)), {nan, nan})
      |> pick(Nx.logical_and(pos_inf, Nx.logical_not(odd)), exp_at_infinity(inf, im))
      |> pick(Nx.logical_and(pos_inf, Nx.is_nan(im)), {inf, nan})
      |> pick(Nx.equal(re, const(:neg_infinity, re)), {const(0.0, re), const(0.0, re)})

    join(out, r, i)
  end

  # Complex.log/1: log(abs(z)) + i atan2(im, re), with Complex.atan2/2's
  # cases where IEEE's differ: a finite im over re = +infinity gives +0.0
  # (IEEE: the sign of im), over -infinity +pi (IEEE: pi with im's sign).
  # MLX's float64 atan2 gave :math.atan2's bits on 20,000 of 20,000 values.
  def run(:log, [out, t]) do
    {re, im} = parts(t)
    finite_im = Nx.logical_not(non_finite(im))
    angle = Nx.atan2(im, re)

    angle =
      Nx.select(
        Nx.logical_and(finite_im, Nx.equal(re, const(:infinity, re))),
        const(0.0, re),
        angle
      )

    minus_inf = Nx.equal(re, const(:neg_infinity, re))
    angle = Nx.select(Nx.logical_and(finite_im, minus_inf), const(:math.pi(), re), angle)
    join(out, Nx.log(magnitude(re, im)), angle)
  end

  # Complex.sqrt/1: its cases for NaN and infinite parts, in its order (the
  # last pick here is its first clause); then a zero stays as it is, and
  # otherwise w from the larger of |re| and |im| (Erlang's abs), as there.
  def run(:sqrt, [out, t]) do
    {re, im} = parts(t)
    f64 = &const(&1, re)
    {x, y} = {erlang_abs(re), erlang_abs(im)}
    half_sqrt = fn v -> Nx.sqrt(Nx.multiply(f64.(0.5), v)) end
    q1 = Nx.divide(y, x)

    w1 =
      Nx.multiply(
        Nx.sqrt(x),
        half_sqrt.(Nx.add(f64.(1.0), Nx.sqrt(Nx.add(f64.(1.0), Nx.multiply(q1, q1)))))
      )

    q2 = Nx.divide(x, y)

    w2 =
      Nx.multiply(
        Nx.sqrt(y),
        half_sqrt.(Nx.add(q2, Nx.sqrt(Nx.add(f64.(1.0), Nx.multiply(q2, q2)))))
      )

    w = Nx.select(Nx.greater_equal(x, y), w1, w2)
    i2 = Nx.select(Nx.greater_equal(im, 0), w, Nx.negate(w))
    pos = Nx.greater_equal(re, 0)

    finite =
      {Nx.select(pos, w, Nx.divide(im, Nx.multiply(f64.(2.0), i2))),
       Nx.select(pos, Nx.divide(im, Nx.multiply(f64.(2.0), w)), i2)}

    {inf, neg_inf} = {f64.(:infinity), f64.(:neg_infinity)}

    {r, i} =
      finite
      |> pick(Nx.logical_and(Nx.equal(re, 0), Nx.equal(im, 0)), {re, im})
      |> pick(Nx.equal(re, neg_inf), {f64.(0.0), inf})
      |> pick(Nx.equal(re, inf), {inf, f64.(0.0)})
      |> pick(Nx.equal(im, neg_inf), {inf, neg_inf})
      |> pick(Nx.equal(im, inf), {inf, inf})
      |> pick(Nx.logical_or(Nx.is_nan(re), Nx.is_nan(im)), {f64.(:nan), f64.(:nan)})

    join(out, r, i)
  end

  # Complex.sin/1 and Complex.cos/1: sin re cosh im + i cos re sinh im, and
  # cos re cosh im - i sin re sinh im, with their cases: a NaN part, or an
  # infinite re, gives NaN + NaN i; a finite re with an infinite im gives,
  # for sin, (re * im) + im i, for cos, infinity + (-im * re) i, where
  # Complex.multiply of an infinity by a finite number follows its sign and
  # gives NaN for zero.
  def run(name, [out, t]) when name in [:sin, :cos] do
    {re, im} = parts(t)
    finite_re = Nx.logical_not(non_finite(re))
    # infinity * re with the sign of im (re a finite number)
    signed_inf = Nx.select(Nx.greater(im, 0), inf_times(re), Nx.negate(inf_times(re)))

    {finite, infinite_im} =
      case name do
        :sin ->
          {{Nx.multiply(Nx.sin(re), Nx.cosh(im)), Nx.multiply(Nx.cos(re), Nx.sinh(im))},
           {signed_inf, im}}

        :cos ->
          # Complex.cos's `-:math.sin(re)` is 0.0 - sin(re) in the BEAM's
          # compiled code (OTP 25: -0.0 there is +0.0), then times sinh(im);
          # and -im * re: (the infinity of -im) times re
          minus_sin = Nx.subtract(const(0.0, re), Nx.sin(re))

          {{Nx.multiply(Nx.cos(re), Nx.cosh(im)), Nx.multiply(minus_sin, Nx.sinh(im))},
           {const(:infinity, re), Nx.negate(signed_inf)}}
      end

    odd = Nx.logical_or(Nx.logical_or(Nx.is_nan(re), Nx.is_nan(im)), Nx.logical_not(finite_re))
    nan = const(:nan, re)

    {r, i} =
      finite
      |> pick(Nx.logical_and(finite_re, Nx.is_infinity(im)), infinite_im)
      |> pick(odd, {nan, nan})

    join(out, r, i)
  end

  # A real value x becomes x + 0i (NaN as Nx writes it), a c64 its parts.
  def run(:as_type, [out, t]) do
    {re, im} = parts(t)
    join(out, re, im)
  end

  def run(:negate, [out, t]) do
    {re, im} = parts(t)
    join(out, Nx.negate(re), Nx.negate(im))
  end

  def run(:conjugate, [out, t]) do
    {re, im} = parts(t)
    join(out, re, Nx.negate(im))
  end

  def run(:sum, [out, t, opts]) do
    {re, im} = parts(t)
    sum = &Nx.sum(&1, axes: opts[:axes], keep_axes: opts[:keep_axes])
    join(out, sum.(re), sum.(im))
  end

  def run(name, [out, t]) when name in @parts do
    {re, im} = parts(t)

    part =
      case name do
        :real -> re
        :imag -> im
        :abs -> magnitude(re, im)
      end

    %{out | data: canonical_nan(part).data}
  end

  def run(:dot, [out, a, ca, ba, b, cb, bb]) do
    {ar, ai} = parts(a)
    {br, bi} = parts(b)
    dot = fn x, y -> Nx.dot(x, ca, ba, y, cb, bb) end
    re = Nx.subtract(dot.(ar, br), dot.(ai, bi))
    join(out, re, Nx.add(dot.(ar, bi), dot.(ai, br)))
  end

  # select: the pred broadcast over each element's bytes.
  def run(:select, [%T{shape: shape} = out, pred, a, b]) do
    rank = tuple_size(shape)
    full = Tuple.insert_at(shape, rank, 16)
    pred = pred |> unnamed() |> Nx.broadcast(shape) |> Nx.new_axis(rank) |> Nx.broadcast(full)
    store(out, Nx.select(pred, bytes(a), bytes(b)))
  end

  # Same bytes, another shape (a new array: deallocating one leaves the other).
  def run(name, [out, t | _]) when name in [:reshape, :squeeze], do: store(out, bytes(t))

  def run(:transpose, [out, t, axes]),
    do: store(out, Nx.transpose(bytes(t), axes: axes ++ [length(axes)]))

  def run(:reverse, [out, t, axes]), do: store(out, Nx.reverse(bytes(t), axes: axes))

  def run(:broadcast, [out, t, shape, axes]) do
    rank = tuple_size(shape)
    store(out, Nx.broadcast(bytes(t), Tuple.insert_at(shape, rank, 16), axes: axes ++ [rank]))
  end

  def run(:slice, [out, t, starts, lengths, strides]),
    do: store(out, Nx.slice(bytes(t), starts ++ [0], lengths ++ [16], strides: strides ++ [1]))

  def run(:put_slice, [out, t, starts, slice]),
    do: store(out, Nx.put_slice(bytes(t), starts ++ [0], bytes(slice)))

  def run(:concatenate, [out, list, axis]),
    do: store(out, Nx.concatenate(Enum.map(list, &bytes/1), axis: axis))

  def run(:stack, [out, list, axis]),
    do: store(out, Nx.stack(Enum.map(list, &bytes/1), axis: axis))

  # Complex.divide/2 of two complex numbers: ((r1 r2 + i1 i2) + (i1 r2 -
  # r1 i2) i) / (r2^2 + i2^2), where a finite part over an infinite
  # denominator is +0.0 (Complex's 0, where IEEE keeps the sign), and a
  # finite numerator over (+-infinity + 0i) is 0 + 0i. (Over a zero
  # divisor the numerator is zero too, and 0/0 is NaN on both sides.)
  defp quotient(r1, i1, r2, i2) do
    zero = const(0.0, r1)
    finite = &Nx.logical_not(non_finite(&1))
    den = Nx.add(Nx.multiply(r2, r2), Nx.multiply(i2, i2))
    part = &Nx.select(Nx.logical_and(Nx.is_infinity(den), finite.(&1)), zero, Nx.divide(&1, den))
    re = part.(Nx.add(Nx.multiply(r1, r2), Nx.multiply(i1, i2)))
    im = part.(Nx.subtract(Nx.multiply(i1, r2), Nx.multiply(r1, i2)))
    finite_num = Nx.logical_and(finite.(r1), finite.(i1))
    over_inf = Nx.logical_and(finite_num, Nx.logical_and(Nx.is_infinity(r2), Nx.equal(i2, 0)))
    pick({re, im}, over_inf, {zero, zero})
  end

  # Complex.multiply(:infinity, x) for a number x: infinity, NaN or -infinity by x's sign.
  defp exp_at_infinity(inf, im) do
    if @exp_inf_by_angle,
      do: {inf_times(Nx.cos(im)), inf_times(Nx.sin(im))},
      else: {inf, inf_times(im)}
  end

  defp inf_times(x) do
    Nx.select(
      Nx.greater(x, 0),
      const(:infinity, x),
      Nx.select(Nx.less(x, 0), const(:neg_infinity, x), const(:nan, x))
    )
  end

  # Complex.abs/1: both parts NaN give NaN, any other infinite or NaN part
  # infinity; else, with Erlang's abs (which keeps -0.0), the larger part
  # times sqrt(1 + (smaller/larger)^2), or a part when the other is zero,
  # each step an IEEE double operation as on the BEAM.
  defp magnitude(re, im) do
    {x, y} = {erlang_abs(re), erlang_abs(im)}
    one = const(1.0, re)

    scaled = fn big, small ->
      Nx.multiply(
        big,
        Nx.sqrt(Nx.add(one, Nx.multiply(Nx.divide(small, big), Nx.divide(small, big))))
      )
    end

    finite = Nx.select(Nx.greater(x, y), scaled.(x, y), scaled.(y, x))
    finite = Nx.select(Nx.equal(y, 0), x, finite)
    finite = Nx.select(Nx.equal(x, 0), y, finite)

    result =
      Nx.select(Nx.logical_or(non_finite(re), non_finite(im)), const(:infinity, re), finite)

    Nx.select(Nx.logical_and(Nx.is_nan(re), Nx.is_nan(im)), const(:nan, re), result)
  end

  # Erlang's abs/1 of a float: -x below zero, else x (-0.0 stays -0.0).
  defp erlang_abs(x), do: Nx.select(Nx.less(x, 0), Nx.negate(x), x)

  defp non_finite(x), do: Nx.logical_or(Nx.is_nan(x), Nx.is_infinity(x))

  # {re, im} where cond holds, else {r, i}: the special cases of Complex's
  # functions, applied from its last clause to its first.
  defp pick({r, i}, cond, {r2, i2}), do: {Nx.select(cond, r2, r), Nx.select(cond, i2, i)}

  # An f64 scalar on like's device (Nx's encodings of :nan and the infinities).
  defp const(value, like), do: Nx.tensor(value, type: :f64, backend: backend(like))

  # A c128 tensor's stored array as it is: a uint8 vector of its bytes.
  defp flat_bytes(%T{shape: shape} = t),
    do: %{t | type: {:u, 8}, shape: {Tuple.product(shape) * 16}, names: [nil]}

  # A c128 tensor's bytes as an unnamed uint8 tensor of shape `shape ++ {16}`.
  defp bytes(%T{shape: shape} = t) do
    flat = flat_bytes(t)
    shape = Tuple.insert_at(shape, tuple_size(shape), 16)

    EMLX.Backend.reshape(
      %{flat | shape: shape, names: List.duplicate(nil, tuple_size(shape))},
      flat
    )
  end

  # out (a c128 template) holding the bytes of u (uint8, shape `out.shape ++ {16}`).
  defp store(%T{shape: shape} = out, %T{} = u) do
    n = Tuple.product(shape)
    flat = EMLX.Backend.reshape(%{u | shape: {n * 16}, names: [nil]}, u)
    %{out | data: flat.data}
  end

  # The real and imaginary parts of a tensor as EMLX f64 tensors of its
  # shape, unnamed (a real tensor's imaginary part is zero).
  defp parts(%T{type: {:c, 128}, shape: shape} = t) do
    rank = tuple_size(shape)
    bytes = flat_bytes(t)

    pairs =
      EMLX.Backend.bitcast(%{bytes | type: {:f, 64}, shape: {Tuple.product(shape) * 2}}, bytes)

    pairs = Nx.reshape(pairs, Tuple.insert_at(shape, rank, 2))
    part = fn i -> pairs |> Nx.slice_along_axis(i, 1, axis: rank) |> Nx.squeeze(axes: [rank]) end
    {part.(0), part.(1)}
  end

  defp parts(%T{type: {:c, 64}} = t) do
    t = unnamed(t)
    {Nx.as_type(Nx.real(t), :f64), Nx.as_type(Nx.imag(t), :f64)}
  end

  defp parts(%T{} = t) do
    re = Nx.as_type(unnamed(t), :f64)
    {re, Nx.broadcast(const(0.0, t), re.shape)}
  end

  defp unnamed(%T{shape: shape} = t), do: Nx.rename(t, List.duplicate(nil, tuple_size(shape)))

  defp backend(%T{data: %{device: device}}), do: {EMLX.Backend, device: device}

  # out (a c128 template) holding re + im i.
  defp join(%T{shape: shape} = out, re, im) do
    n = Tuple.product(shape)
    re = re |> Nx.broadcast(shape) |> canonical_nan()
    im = im |> Nx.broadcast(shape) |> canonical_nan()
    pairs = [re, im] |> Nx.stack(axis: -1) |> Nx.reshape({n * 2})
    bytes = EMLX.Backend.bitcast(%{pairs | type: {:u, 8}, shape: {n * 16}}, pairs)
    %{out | data: bytes.data}
  end

  # Every NaN as Nx writes one (a positive quiet NaN): IEEE arithmetic may
  # give another sign or payload, which Nx.BinaryBackend's :nan does not.
  defp canonical_nan(x), do: Nx.select(Nx.is_nan(x), const(:nan, x), x)
end
