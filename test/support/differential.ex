defmodule EMLX.Differential do
  @moduledoc """
  Differential testing: run one Nx call on seeded random inputs under
  `EMLX.Backend` and under `Nx.BinaryBackend`, and compare the results.

  A *case* is plain data (a map), so test files can build their case lists
  at compile time from tables and embed them in test bodies:

      %{
        id: "add s8{3,1,5} s8{4,1}",    # unique; also the seed's source
        group: "binary add s8",          # test grouping
        call: {Nx, :add},                # the function applied to the args
        args: [spec, ...],
        tol: %{},                        # per output type rtol/atol overrides
        compare: :values                 # or :bits (bitcast: exact bytes)
      }

  Argument specs:

    * `{:t, type, shape, domain}` - a tensor of seeded random values of
      `type` (see `sample/3` for the domains)
    * `{:list, [spec]}` - a list of specs (concatenate, dynamic starts)
    * `{:fun, module, name, arity}` - a function capture (`Nx.reduce/4`)
    * anything else - passed as is (shapes, axes, option lists)

  Inputs are generated on `Nx.BinaryBackend` with `:rand` in `:exsss` mode
  from `{seed, argument_index, 3}`, where `seed = :erlang.phash2(id)`, so a
  case reproduces from its id alone:

      EMLX.Differential.inputs(c)   # the BinaryBackend inputs
      EMLX.Differential.run(c)      # :ok or {:error, message}
  """

  @types for name <- ~w(u8 u16 u32 u64 s8 s16 s32 s64 f16 bf16 f32 f64 c64)a,
             do: {name, Nx.Type.normalize!(name)}

  @doc "Every type EMLX supports, as `{name, type}`."
  def types, do: @types

  @doc """
  The types of a class: `:u`, `:s`, `:f` (f16, bf16, f32, f64), `:c`, or
  the unions `:int` (u and s), `:real` (int and f), `:float` (f and c),
  `:all`; a list is the union of its classes.
  """
  def types_of(classes) when is_list(classes),
    do: classes |> Enum.flat_map(&types_of/1) |> Enum.uniq()

  def types_of(:all), do: Keyword.values(@types)
  def types_of(:int), do: types_of([:u, :s])
  def types_of(:real), do: types_of([:u, :s, :f])
  def types_of(:float), do: types_of([:f, :c])
  def types_of(:u), do: [{:u, 8}, {:u, 16}, {:u, 32}, {:u, 64}]
  def types_of(:s), do: [{:s, 8}, {:s, 16}, {:s, 32}, {:s, 64}]
  def types_of(:f), do: [{:f, 16}, {:bf, 16}, {:f, 32}, {:f, 64}]
  def types_of(:c), do: [{:c, 64}]

  @doc ~S|Pairs of types written `"a:b"` (`"u8:s8"` is `{{:u, 8}, {:s, 8}}`).|
  def type_pairs(names) do
    for name <- names do
      name
      |> String.split(":")
      |> Enum.map(&Nx.Type.normalize!(String.to_atom(&1)))
      |> List.to_tuple()
    end
  end

  @doc "The class of a type: `:u`, `:s`, `:f` or `:c`."
  def class({:bf, 16}), do: :f
  def class({k, _}), do: k

  @doc "Whether every type is in `classes`."
  def accepts?(classes, types), do: Enum.all?(List.wrap(types), &(&1 in types_of(classes)))

  @doc "The name of a type (`\"f32\"`)."
  def type_name(type), do: Nx.Type.to_string(type)

  ## Cases

  @doc """
  Builds a case. `opts`: `:group` (default: the function's name), `:tol`
  (a map of output type => rtol, or `{rtol, atol}`), `:compare`,
  `:pending` (an op EMLX does not implement yet: its not-implemented error
  is accepted).
  """
  def new_case({mod, fun}, args, opts \\ []) do
    id =
      Keyword.get_lazy(opts, :id, fn -> Enum.join([fun | Enum.map(args, &describe/1)], " ") end)

    %{
      id: id,
      group: Keyword.get(opts, :group, Atom.to_string(fun)),
      call: {mod, fun},
      args: args,
      tol: Keyword.get(opts, :tol, %{}),
      compare: Keyword.get(opts, :compare, :values),
      pending: Keyword.get(opts, :pending, false),
      seed: :erlang.phash2(id)
    }
  end

  @doc "A tensor argument spec."
  def t(type, shape, domain \\ :any), do: {:t, type, shape, domain}

  @doc "Raises if two cases share an id (ids key the known-failure lists)."
  def check_unique!(cases) do
    dups = cases |> Enum.frequencies_by(& &1.id) |> Enum.filter(fn {_, n} -> n > 1 end)
    if dups != [], do: raise(ArgumentError, "duplicate case ids: #{inspect(dups)}")
    cases
  end

  @doc "A short description of an argument spec, for case ids."
  def describe({:t, type, shape, domain}),
    do: type_name(type) <> compact(shape) <> domain_suffix(domain)

  def describe({:list, specs}), do: "[" <> Enum.map_join(specs, ",", &describe/1) <> "]"
  def describe({:fun, _mod, name, arity}), do: "&#{name}/#{arity}"
  def describe(other), do: compact(other)

  defp domain_suffix(:any), do: ""
  defp domain_suffix(domain) when is_atom(domain), do: ":" <> Atom.to_string(domain)
  defp domain_suffix(domain), do: ":" <> compact(domain)

  defp compact(term), do: term |> inspect(limit: 12) |> String.replace(" ", "")

  ## Inputs (EMLX.Differential.Inputs)

  @doc "The case's arguments on Nx.BinaryBackend."
  defdelegate inputs(c), to: EMLX.Differential.Inputs

  @doc "One value of `type` from `domain` (see `EMLX.Differential.Inputs.sample/3`)."
  defdelegate sample(domain, type, st), to: EMLX.Differential.Inputs

  ## Compositions for results that are unique only up to signs

  @doc "`q·r` of `Nx.LinAlg.qr/1` (q and r alone are unique up to column signs)."
  def qr_product(t) do
    {q, r} = Nx.LinAlg.qr(t)
    Nx.dot(q, r)
  end

  @doc "Eigenvalues and `v·diag(w)·vᵀ` of `Nx.LinAlg.eigh/1`."
  def eigh_reconstruct(t) do
    {w, v} = Nx.LinAlg.eigh(t)
    {w, v |> Nx.multiply(w) |> Nx.dot([1], v, [1])}
  end

  @doc "Singular values and `u·diag(s)·vt` of `Nx.LinAlg.svd/1`."
  def svd_reconstruct(t) do
    {u, s, vt} = Nx.LinAlg.svd(t)
    {s, u |> Nx.multiply(s) |> Nx.dot(vt)}
  end

  ## Running and comparing

  @doc """
  Runs a case on both backends and compares. Returns `:ok`,
  `{:error, message}` (a mismatch or an EMLX error), `{:pending, message}`
  (a pending op that EMLX reports as not implemented) or
  `{:invalid, message}` (Nx.BinaryBackend itself raised: a bad case).
  """
  def run(%{call: {mod, fun}} = c) do
    bin_args = inputs(c)

    reference = fn ->
      Nx.with_default_backend(Nx.BinaryBackend, fn -> apply(mod, fun, bin_args) end)
    end

    # MLX is lazy: errors can surface when the result is read back, so
    # reading it back is part of the guarded call.
    emlx = fn ->
      got = Nx.with_default_backend(emlx_backend(), fn -> apply(mod, fun, to_emlx(bin_args)) end)
      {got, read_back(got)}
    end

    with {:ref, {:ok, want}} <- {:ref, safely(reference)},
         {:emlx, {:ok, {got, got_bin}}} <- {:emlx, safely(emlx)},
         :ok <- compare(got, got_bin, want, c) do
      :ok
    else
      {:ref, {:raised, e}} ->
        {:invalid, header(c) <> "Nx.BinaryBackend raised: " <> Exception.message(e)}

      {:emlx, {:raised, e}} ->
        msg = Exception.message(e)

        if c.pending and msg =~ "does not implement",
          do: {:pending, msg},
          else:
            {:error,
             header(c) <> "EMLX raised #{inspect(e.__struct__)}: #{msg}" <> show_inputs(bin_args)}

      {:error, msg} ->
        {:error, header(c) <> msg <> show_inputs(bin_args)}
    end
  end

  defp safely(fun) do
    {:ok, fun.()}
  rescue
    e -> {:raised, e}
  end

  defp header(c), do: "#{c.id} (seed #{c.seed}): "

  defp show_inputs(args) do
    args
    |> Enum.with_index(1)
    |> Enum.map_join(fn {a, i} -> "\n  arg #{i}: " <> inspect_arg(a) end)
  end

  defp inspect_arg(%Nx.Tensor{} = t), do: inspect(t, limit: 40) |> String.replace("\n", " ")

  defp inspect_arg(list) when is_list(list),
    do: "[" <> Enum.map_join(list, ", ", &inspect_arg/1) <> "]"

  defp inspect_arg(other), do: inspect(other)

  defp to_emlx(%Nx.Tensor{} = t), do: Nx.backend_copy(t, emlx_backend())
  defp to_emlx(list) when is_list(list), do: Enum.map(list, &to_emlx/1)
  defp to_emlx(other), do: other

  defp read_back(%Nx.Tensor{} = t), do: Nx.backend_copy(t, Nx.BinaryBackend)

  defp read_back(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&read_back/1) |> List.to_tuple()

  defp read_back(other), do: other

  @doc """
  Compares an EMLX result (`got`, and `got_bin`, its copy on
  Nx.BinaryBackend) with the expected one; tuples element-wise.
  """
  def compare(got, got_bin, want, c) when is_tuple(want) and not is_struct(want) do
    if not is_tuple(got) or tuple_size(got) != tuple_size(want) do
      {:error, "expected a tuple of #{tuple_size(want)}, got #{inspect(got)}"}
    else
      [Tuple.to_list(got), Tuple.to_list(got_bin), Tuple.to_list(want)]
      |> Enum.zip()
      |> Enum.find_value(:ok, fn {g, gb, w} ->
        case compare(g, gb, w, c) do
          :ok -> nil
          err -> err
        end
      end)
    end
  end

  def compare(%Nx.Tensor{} = got, %Nx.Tensor{} = got_bin, %Nx.Tensor{} = want, c) do
    cond do
      not match?(%EMLX.Backend{}, got.data) ->
        {:error, "the result is on #{inspect(got.data.__struct__)}, not EMLX.Backend"}

      got.shape != want.shape ->
        {:error, "shape: expected #{inspect(want.shape)}, got #{inspect(got.shape)}"}

      got.type != want.type ->
        {:error, "type: expected #{inspect(want.type)}, got #{inspect(got.type)}"}

      true ->
        compare_values(got_bin, want, c)
    end
  end

  def compare(got, _got_bin, want, _c) do
    if got == want, do: :ok, else: {:error, "expected #{inspect(want)}, got #{inspect(got)}"}
  end

  defp compare_values(got, want, c) do
    exact? = c.compare == :bits or class(want.type) in [:u, :s]

    if exact? do
      if Nx.to_binary(got) == Nx.to_binary(want),
        do: :ok,
        else: mismatch(got, want, fn g, w -> g == w end, "exact")
    else
      {rtol, atol} = tolerance(want.type, c.tol)
      close? = fn g, w -> close?(g, w, rtol, atol) end
      gl = Nx.to_flat_list(got)
      wl = Nx.to_flat_list(want)

      if Enum.zip_with(gl, wl, close?) |> Enum.all?(),
        do: :ok,
        else: mismatch(got, want, close?, "rtol #{rtol}, atol #{atol}")
    end
  end

  defp mismatch(got, want, close?, how) do
    bad =
      Enum.zip([Nx.to_flat_list(got), Nx.to_flat_list(want), Stream.iterate(0, &(&1 + 1))])
      |> Enum.reject(fn {g, w, _} -> close?.(g, w) end)

    first =
      bad
      |> Enum.take(6)
      |> Enum.map_join(", ", fn {g, w, i} -> "[#{i}] expected #{fmt(w)} got #{fmt(g)}" end)

    {:error,
     "#{length(bad)} of #{Nx.size(want)} values differ (#{how}): #{first}" <>
       "\n  expected: #{inspect_arg(want)}\n  got:      #{inspect_arg(got)}"}
  end

  defp fmt(%Complex{re: re, im: im}),
    do: "#{fmt(re)}#{if is_number(im) and im < 0, do: "", else: "+"}#{fmt(im)}i"

  defp fmt(v), do: inspect(v)

  @default_tol %{
    {:f, 16} => 1.0e-2,
    {:bf, 16} => 5.0e-2,
    {:f, 32} => 1.0e-5,
    {:c, 64} => 1.0e-5,
    {:f, 64} => 1.0e-12
  }

  @doc """
  `{rtol, atol}` for an output type: the case's override (a number is both
  rtol and atol), else the defaults: f16 1e-2, bf16 5e-2, f32 and c64 1e-5,
  f64 1e-12 (test tables loosen f64 to 1e-6 for ops whose MLX CPU kernels
  are float32-accurate).
  """
  def tolerance(type, overrides) do
    case Map.get(overrides, type, Map.fetch!(@default_tol, type)) do
      {rtol, atol} -> {rtol, atol}
      tol -> {tol, tol}
    end
  end

  @doc "Whether `got` is within tolerance of `want` (NaN equals NaN, infinities equal)."
  def close?(%Complex{re: gr, im: gi}, %Complex{re: wr, im: wi}, rtol, atol) do
    scale = max(magnitude(wr), magnitude(wi))
    close?(gr, wr, rtol, atol + rtol * scale) and close?(gi, wi, rtol, atol + rtol * scale)
  end

  def close?(same, same, _rtol, _atol), do: true

  def close?(g, w, rtol, atol) when is_number(g) and is_number(w),
    do: abs(g - w) <= atol + rtol * abs(w)

  def close?(_, _, _, _), do: false

  defp magnitude(v) when is_number(v), do: abs(v)
  defp magnitude(_), do: 0.0

  defp emlx_backend, do: {EMLX.Backend, device: EMLX.Case.device()}
end
