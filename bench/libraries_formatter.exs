# An ExUnit formatter for bench/libraries.sh: one Erlang term per finished
# test, appended (and flushed) to the file named by EMLX_LIBS_RESULTS, so a
# suite stopped by its time limit still tells how far it got. Loaded by the
# test_helper.exs prelude that bench/libraries.exs writes into each library
# copy; it is never part of EMLX itself.
#
# Each line is `{:test, module, name, state, time_us, class, detail, file}.`
# where state is :passed, :failed, :skipped, :excluded or :invalid, class is
# a short cause (nil when passed), detail the first lines of the message and
# file the test file, relative to the project.
# Idioms that hold only on Nx.BinaryBackend are classed apart:
#
#   * "idiom: == on tensor structs": an assertion (or a doctest) compares
#     tensors, or structs and containers holding them, with `==`/`===`, and
#     every tensor pair has equal shape, type, names and values: only the
#     struct (its backend data) differs, which Nx.BinaryBackend alone makes
#     equal;
#   * "idiom: tensor captured by a jit closure": Nx refuses to inline a
#     tensor of another backend than Nx.BinaryBackend into a defn
#     expression (Nx.Defn.IncompatibleBackendsError, and the ArgumentErrors
#     of Nx.Defn.grad/2 and Nx.Defn.Expr that say so);
#   * "idiom: a test's own backend meets the default backend": a stand-in
#     backend defined by a test (its name ends in TestBackend) mixes only
#     with Nx.BinaryBackend;
#   * "idiom: a tensor sent to another node without a copy to
#     Nx.BinaryBackend": Nx.Serving's docs ask it of EXLA's and Torchx's
#     tensors too (distributed_preprocessing); EMLX raises when such a
#     tensor is used.

defmodule EMLXLibs.Formatter do
  @moduledoc false
  use GenServer

  def install do
    case System.get_env("EMLX_LIBS_RESULTS") do
      path when path not in [nil, ""] ->
        ExUnit.configure(formatters: [ExUnit.CLIFormatter, __MODULE__], emlx_libs_results: path)

      _ ->
        :ok
    end
  end

  @impl true
  def init(opts) do
    path = Keyword.fetch!(opts, :emlx_libs_results)
    {:ok, io} = File.open(path, [:append, :utf8])
    write(io, {:suite, :started, System.system_time(:second)})
    {:ok, io}
  end

  @impl true
  def handle_cast({:test_finished, %ExUnit.Test{} = test}, io) do
    {state, class, detail} =
      try do
        describe(test.state)
      rescue
        e -> {elem(test.state, 0), "(formatter: #{inspect(e.__struct__)})", nil}
      end

    file = test.tags[:file] && Path.relative_to_cwd(test.tags[:file])
    write(io, {:test, test.module, test.name, state, test.time, class, detail, file})
    {:noreply, io}
  end

  def handle_cast({:module_finished, %ExUnit.TestModule{state: {:failed, failures}} = m}, io) do
    {_, class, detail} = describe({:failed, failures})
    write(io, {:module_failed, m.name, class, detail})
    {:noreply, io}
  end

  def handle_cast({:suite_finished, _times}, io) do
    write(io, {:suite, :finished, System.system_time(:second)})
    {:noreply, io}
  end

  def handle_cast(_event, io), do: {:noreply, io}

  defp write(io, term) do
    IO.write(io, :io_lib.format(~c"~0p.~n", [term]))
    :file.datasync(io)
  end

  defp describe(nil), do: {:passed, nil, nil}
  defp describe({:skipped, _}), do: {:skipped, nil, nil}
  defp describe({:excluded, _}), do: {:excluded, nil, nil}
  defp describe({:invalid, _}), do: {:invalid, "setup_all failed", nil}

  defp describe({:failed, [{kind, reason, stack} | _]}) do
    detail =
      try do
        Exception.format_banner(kind, reason, stack) |> String.slice(0, 1500)
      rescue
        _ -> inspect(reason, limit: 20) |> String.slice(0, 1500)
      end

    {:failed, classify(kind, reason), detail}
  end

  defp classify(:error, %ExUnit.AssertionError{} = e) do
    cond do
      tensor_idiom?(e) -> "idiom: == on tensor structs"
      e.message =~ "Doctest failed" -> "doctest: value differs"
      true -> "assertion: " <> first_line(e.message)
    end
  end

  defp classify(:error, %ExUnit.TimeoutError{}), do: "timeout (ExUnit per-test limit)"

  defp classify(:error, %{__struct__: Nx.Defn.IncompatibleBackendsError} = e) do
    cond do
      msg(e) =~ "Nx.Defn.Expr and" -> "idiom: tensor captured by a jit closure"
      msg(e) =~ ~r/Test\w*Backend/ -> "idiom: a test's own backend meets the default backend"
      true -> "Nx.Defn.IncompatibleBackendsError: " <> msg(e)
    end
  end

  # A test's stand-in backend without to_binary: only Nx.BinaryBackend
  # takes its tensors (through backend_transfer).
  defp classify(:error, %UndefinedFunctionError{module: module} = e) do
    if inspect(module) =~ ~r/Test\w*Backend$/,
      do: "idiom: a test's own backend meets the default backend",
      else: "UndefinedFunctionError: " <> msg(e)
  end

  # The same idiom as Nx.Defn.grad/2 and Nx.Defn.Expr word it.
  defp classify(:error, %ArgumentError{} = e) do
    message = msg(e)

    cond do
      message =~ "captured as a closure inside the gradient function" or
          message =~ ~r/cannot convert tensor allocated on \S+ to an expression/ ->
        "idiom: tensor captured by a jit closure"

      # Nx.Serving's docs: EXLA's and Torchx's tensors, too, must be copied
      # to Nx.BinaryBackend before they go to another node.
      message =~ "this tensor was made on node" ->
        "idiom: a tensor sent to another node without a copy to Nx.BinaryBackend"

      true ->
        "ArgumentError: " <> message
    end
  end

  defp classify(:error, %{__exception__: true} = e), do: inspect(e.__struct__) <> ": " <> msg(e)
  defp classify(:exit, {:timeout, _}), do: "exit: timeout"

  # A linked process (a Task, a serving) that failed: its own failure.
  defp classify({:EXIT, _pid}, {%{__exception__: true} = e, _stack}), do: classify(:error, e)

  # An exit that carries an exception (a distributed serving's remote call):
  # that exception's cause.
  defp classify(:exit, {{%{__exception__: true} = e, stack}, _where}) when is_list(stack),
    do: classify(:error, e)

  # A serving's exit around another (a streaming call): the inner one's cause.
  defp classify(:exit, {{{_, _}, {Nx.Serving, _, _}} = inner, {Nx.Serving, _, _}}),
    do: classify(:exit, inner)

  defp classify(kind, reason),
    do: "#{inspect(kind)}: " <> String.slice(inspect(reason, limit: 5), 0, 120)

  defp msg(e) do
    first_line(Exception.message(e))
  rescue
    _ -> "(message raised)"
  end

  defp first_line(nil), do: ""
  defp first_line(text), do: text |> String.split("\n", parts: 2) |> hd() |> String.slice(0, 200)

  # Both sides hold tensors, and the same values (at Nx.BinaryBackend):
  # the assertion failed only on the struct.
  defp tensor_idiom?(%ExUnit.AssertionError{left: l, right: r}) do
    has_tensor?(l) and has_tensor?(r) and same_values?(l, r)
  rescue
    _ -> false
  end

  defp has_tensor?(%Nx.Tensor{}), do: true
  defp has_tensor?(t) when is_tuple(t), do: t |> Tuple.to_list() |> Enum.any?(&has_tensor?/1)
  defp has_tensor?(l) when is_list(l), do: Enum.any?(l, &has_tensor?/1)
  defp has_tensor?(%{} = m), do: m |> fields() |> Map.values() |> Enum.any?(&has_tensor?/1)
  defp has_tensor?(_), do: false

  defp fields(%{__struct__: _} = s), do: Map.from_struct(s)
  defp fields(m), do: m

  defp same_values?(%Nx.Tensor{} = a, %Nx.Tensor{} = b) do
    a.shape == b.shape and a.type == b.type and a.names == b.names and
      Nx.to_binary(a) == Nx.to_binary(b)
  end

  defp same_values?(a, b) when is_tuple(a) and is_tuple(b) and tuple_size(a) == tuple_size(b),
    do: same_values?(Tuple.to_list(a), Tuple.to_list(b))

  defp same_values?(a, b) when is_list(a) and is_list(b) and length(a) == length(b),
    do: Enum.zip(a, b) |> Enum.all?(fn {x, y} -> same_values?(x, y) end)

  defp same_values?(%{} = a, %{} = b) do
    Map.get(a, :__struct__) == Map.get(b, :__struct__) and
      Map.keys(fields(a)) == Map.keys(fields(b)) and
      Enum.all?(fields(a), fn {k, v} -> same_values?(v, Map.fetch!(fields(b), k)) end)
  end

  defp same_values?(a, b), do: a == b
end
