defmodule EMLX.DefnFuzz do
  @moduledoc """
  Differential fuzzing of the `defn` compiler: seeded random programs
  (`EMLX.DefnFuzz.Gen`) run under `compiler: EMLX` and under Nx's
  evaluator on Nx.BinaryBackend, and their outputs compared.

  Each program is checked three times, through one jitted function (one
  closure, whose captured program is part of EMLX's plan key):

    1. inputs as a tuple;
    2. new input values, the same tuple: a plan-cache hit must compute
       with the new values;
    3. the first values as a map (`%{i0: ..., i1: ...}`): the same flat
       shapes in another container must not reuse the tuple's plan;
    4. both value sets at once, stacked and vectorized (`Nx.vectorize/2`);
    5. the first values eagerly: Nx's evaluator op by op on EMLX.Backend;
    6. the new values through `Nx.Defn.compile/3` (compiled from templates).

  A failure reproduces from its seed alone:

      EMLX.DefnFuzz.check(seed)        # :ok, {:skipped, why} or {:error, message}
      EMLX.DefnFuzz.Gen.program(seed)  # the program, as data
  """

  alias EMLX.DefnFuzz.{Gen, Interp}

  @doc """
  Checks the program of `seed`. Options: `:device` (default `:cpu`),
  `:fuse` (default true).
  """
  def check(seed, opts \\ []), do: check_program(Gen.program(seed), seed, opts)

  @doc """
  Checks a program given as data (`Gen.program/1`'s form, a failing one
  cut down by hand, say), with inputs from `seed`.
  """
  def check_program(prog, seed, opts \\ []) do
    device = Keyword.get(opts, :device, :cpu)
    fuse = Keyword.get(opts, :fuse, true)
    fun = fn container -> Interp.run(prog, container) end
    first = inputs(prog, seed * 2)
    second = inputs(prog, seed * 2 + 1)

    calls = [
      {"tuple", List.to_tuple(first)},
      {"tuple, new values", List.to_tuple(second)},
      {"map", Map.new(Enum.with_index(first), fn {t, i} -> {:"i#{i}", t} end)},
      {"vectorized",
       first |> Enum.zip_with(second, &Nx.vectorize(Nx.stack([&1, &2]), :v)) |> List.to_tuple()},
      {"eager", List.to_tuple(first)},
      {"Nx.Defn.compile", List.to_tuple(second)}
    ]

    Enum.reduce_while(calls, :ok, fn {label, container}, acc ->
      run =
        case label do
          "eager" -> :eager
          "Nx.Defn.compile" -> {:ahead, fuse}
          _ -> fuse
        end

      case compare(fun, container, device, run, prog.float, hooks?(prog.steps)) do
        :ok -> {:cont, acc}
        # (a vectorized call Nx's evaluator cannot compute is no finding)
        {:skipped, _} when label == "vectorized" -> {:cont, acc}
        {:skipped, why} -> {:cont, {:skipped, "#{label}: #{why}"}}
        {:error, msg} -> {:halt, {:error, "seed #{seed} (#{label}, fuse: #{fuse}): #{msg}"}}
      end
    end)
  end

  # A call the reference cannot compute is skipped: a program Nx cannot
  # vectorize (a slice at a computed start raises in Nx's front end for
  # both compilers), one on which Nx's evaluator fails (a vectorized dot of
  # a one-entry vector with itself is a MatchError in Nx.BinaryBackend's
  # sum), or one whose values overflow Erlang's floats (Nx.BinaryBackend
  # computes f32 in doubles, which have no infinity: an ArithmeticError).
  #
  # Nor is a vectorized call of a program with a hook: Nx 0.13.1's evaluator
  # computes wrong values after a hook on a vectorized value (a strided
  # slice of it reads the flat data: `hook(tanh(x))[0..2//2]` of x =
  # [[0, 1, 2, 3], [4, 5, 6, 7]] vectorized gives [tanh 0, tanh 1] for the
  # first entry), its hook gets the vectorized or the devectorized tensor
  # by the order of its walk, and a hook on a vectorized gather gets one
  # with no data.
  defp compare(fun, container, device, run, float, hooks?) do
    _stale = hooks(0)

    case if(hooks? and vectorized?(container), do: :hooked, else: reference(fun, container)) do
      :hooked ->
        {:skipped, "a hook in a vectorized program"}

      {:raised, e} ->
        {:skipped,
         inspect(e.__struct__) <>
           " in the reference: " <> String.slice(Exception.message(e), 0, 300)}

      {:ok, want} ->
        want_hooks = hooks(0)

        with :ok <- compare_emlx(fun, container, device, run, float, want),
             do: compare_hooks(hooks(0), want_hooks, float)
    end
  rescue
    e -> {:error, "raised #{Exception.format(:error, e, __STACKTRACE__)}"}
  end

  # The values the program's hooks have sent so far, in order (hooks run
  # in the calling process, before the call returns).
  defp hooks(settle, acc \\ []) do
    receive do
      {:fuzz_hook, k, t} -> hooks(settle, [{k, t} | acc])
    after
      settle -> Enum.reverse(acc)
    end
  end

  defp hooks?(term) when is_tuple(term) and elem(term, 0) == :hook, do: true
  defp hooks?(term) when is_tuple(term), do: hooks?(Tuple.to_list(term))
  defp hooks?(term) when is_list(term), do: Enum.any?(term, &hooks?/1)
  defp hooks?(_term), do: false

  defp vectorized?(container),
    do: [container] |> Nx.Defn.Composite.flatten_list() |> Enum.any?(&(&1.vectorized_axes != []))

  # By hook, the values it got, in order, a value repeated at once counted
  # once: Nx's evaluator runs a hook inside a cond branch again wherever a
  # later hook's token holds it, where EMLX runs it once, and the reverse
  # for a vectorized cond (a hook's run count is not part of its contract).
  defp compare_hooks(got, want, float) do
    {got, want} = {by_hook(got), by_hook(want)}

    if Map.keys(got) != Map.keys(want) do
      {:error, "hooks ran #{inspect(Map.keys(got))}, want #{inspect(Map.keys(want))}"}
    else
      Enum.find_value(want, :ok, fn {k, values} ->
        cond do
          length(got[k]) != length(values) ->
            {:error, "hook #{k} got #{length(got[k])} values, want #{length(values)}"}

          (result = compare_outputs(List.to_tuple(got[k]), List.to_tuple(values), float)) != :ok ->
            {:error, "hook #{k} values: " <> elem(result, 1)}

          true ->
            nil
        end
      end)
    end
  end

  defp by_hook(hooks) do
    hooks
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Map.new(fn {k, values} -> {k, Enum.dedup_by(values, &{&1.shape, Nx.to_binary(&1)})} end)
  end

  defp reference(fun, container) do
    want =
      Nx.with_default_backend(Nx.BinaryBackend, fn ->
        Nx.Defn.jit_apply(fun, [container], compiler: Nx.Defn.Evaluator)
      end)

    # (Nx's evaluator returns a hook on a vectorized gather with no data)
    if Enum.all?(Nx.Defn.Composite.flatten_list([want]), &whole?/1),
      do: {:ok, want},
      else: {:raised, %RuntimeError{message: "an output without its data"}}
  rescue
    e -> {:raised, e}
  end

  defp whole?(%Nx.Tensor{data: %Nx.BinaryBackend{state: bin}, type: {_, bits}} = t),
    do: byte_size(bin) * 8 == Nx.size(Nx.devectorize(t)) * bits

  defp whole?(_), do: true

  # run: :eager (Nx's evaluator on EMLX.Backend), {:ahead, fuse}
  # (Nx.Defn.compile), or the :fuse option of a jit call
  defp compare_emlx(fun, container, device, run, float, want) do
    on_emlx =
      Nx.Defn.Composite.traverse(container, &Nx.backend_copy(&1, {EMLX.Backend, device: device}))

    got =
      case run do
        :eager ->
          Nx.with_default_backend({EMLX.Backend, device: device}, fn ->
            Nx.Defn.jit_apply(fun, [on_emlx], compiler: Nx.Defn.Evaluator)
          end)

        {:ahead, fuse} ->
          templates = Nx.Defn.Composite.traverse(container, &Nx.to_template/1)
          compiled = Nx.Defn.compile(fun, [templates], compiler: EMLX, device: device, fuse: fuse)
          compiled.(on_emlx)

        fuse ->
          Nx.Defn.jit_apply(fun, [on_emlx], compiler: EMLX, device: device, fuse: fuse)
      end

    compare_outputs(got, want, float)
  end

  @doc """
  Compares two outputs (any container): the same structure, types and
  shapes, integers equal, floats within 1e-4 (f64 programs: 1e-9, f16:
  3e-2, bf16: 6e-2) of the largest magnitude. Returns `:ok` or `{:error, message}`.
  """
  def compare_outputs(got, want, float) do
    if shape_of(got) != shape_of(want) do
      {:error,
       "output containers differ: #{inspect(shape_of(got))} vs #{inspect(shape_of(want))}"}
    else
      [got, want]
      |> Enum.map(&Nx.Defn.Composite.flatten_list([&1]))
      |> Enum.zip()
      |> Enum.with_index()
      |> Enum.find_value(:ok, fn {{g, w}, k} ->
        g = g |> Nx.backend_copy(Nx.BinaryBackend) |> Nx.devectorize(keep_names: false)

        case differ(g, Nx.devectorize(w, keep_names: false), float) do
          nil -> nil
          msg -> {:error, "output #{k}: #{msg}"}
        end
      end)
    end
  end

  defp shape_of(%Nx.Tensor{} = t), do: {:tensor, t.type, t.shape, t.vectorized_axes}

  defp shape_of(t) when is_tuple(t),
    do: t |> Tuple.to_list() |> Enum.map(&shape_of/1) |> List.to_tuple()

  defp shape_of(%{} = m), do: Map.new(m, fn {k, v} -> {k, shape_of(v)} end)

  defp differ(g, w, float) do
    cond do
      g.type != w.type or g.shape != w.shape ->
        "#{inspect(g.type)}#{inspect(g.shape)} vs #{inspect(w.type)}#{inspect(w.shape)}"

      elem(w.type, 0) in [:f, :bf, :c] ->
        tol = tolerance(float)
        scale = max(1.0, w |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number() |> finite_or(1.0))
        close = Nx.all_close(g, w, rtol: tol, atol: tol * scale, equal_nan: true)
        if Nx.to_number(close) == 1, do: nil, else: "values differ:\n#{inspect(g)}\n#{inspect(w)}"

      Nx.to_binary(g) == Nx.to_binary(w) ->
        nil

      true ->
        "values differ:\n#{inspect(g)}\n#{inspect(w)}"
    end
  end

  # by the program's float type: half precision rounds every step of a
  # chain (eagerly) or none of them (fused), f64 is exact on both sides
  defp tolerance({:f, 64}), do: 1.0e-9
  defp tolerance({:f, 32}), do: 1.0e-4
  defp tolerance({:f, 16}), do: 3.0e-2
  defp tolerance({:bf, 16}), do: 6.0e-2

  defp finite_or(x, _) when is_float(x), do: x
  defp finite_or(_, default), do: default

  @doc "Seeded random inputs for a program, on Nx.BinaryBackend."
  def inputs(%{inputs: specs}, seed) do
    :rand.seed(:exsss, {seed, 3, 99})

    for {type, shape} <- specs do
      n = shape |> Tuple.to_list() |> Enum.product()

      data =
        case type do
          {:s, _} -> for _ <- 1..n//1, do: Enum.random(-9..9)
          {:u, _} -> for _ <- 1..n//1, do: Enum.random(0..9)
          _ -> for _ <- 1..n//1, do: :rand.uniform() * 4 - 2
        end

      data |> Nx.tensor(type: type, backend: Nx.BinaryBackend) |> Nx.reshape(shape)
    end
  end
end
