defmodule EMLX.Case do
  @moduledoc """
  Test helpers: run the same Nx code on EMLX.Backend and Nx.BinaryBackend
  and compare.
  """
  use ExUnit.CaseTemplate

  using do
    quote do
      import EMLX.Case
    end
  end

  @doc """
  Sends `:read_back` to the calling process on every array read back to the
  BEAM (the `[:emlx, :to_binary, :stop]` telemetry event) until the test
  ends. For tests that check work stays on the worker thread.
  """
  def notify_read_backs do
    id = {__MODULE__, make_ref()}
    :telemetry.attach(id, [:emlx, :to_binary, :stop], &__MODULE__.read_back/4, self())
    ExUnit.Callbacks.on_exit(fn -> :telemetry.detach(id) end)
  end

  @doc false
  # (handlers run in the reading process: only the test's own reads count,
  # not those of the async tests running beside it)
  def read_back(_event, _measurements, _metadata, pid),
    do: if(self() == pid, do: send(pid, :read_back), else: :ok)

  @doc """
  The device the suite runs on: `EMLX_TEST_DEVICE` (`cpu`, the default, or
  `gpu`, which needs a CUDA build of MLX and a GPU).
  """
  def device do
    case System.get_env("EMLX_TEST_DEVICE", "cpu") do
      "cpu" -> :cpu
      "gpu" -> :gpu
      other -> raise ArgumentError, "EMLX_TEST_DEVICE must be cpu or gpu, got: #{inspect(other)}"
    end
  end

  @doc """
  Runs `fun.(i)` for `i` in `1..count`, each in a process of its own bound
  to a new command queue of the test device (`EMLX.CommandQueue.with_queue/2`),
  all at once; returns `{queue_ref, result}` in order of `i`.
  """
  def on_own_queues(count, fun) do
    1..count
    |> Enum.map(fn i ->
      Task.async(fn ->
        q = EMLX.CommandQueue.new!(device())
        {q.ref, EMLX.CommandQueue.with_queue(q, fn -> fun.(i) end)}
      end)
    end)
    |> Task.await_many(60_000)
  end

  @doc "The integer in environment variable `name`, or `default`."
  def env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      v -> String.to_integer(v)
    end
  end

  @doc "A tensor on EMLX (on the test device)."
  def emlx(data, opts \\ []),
    do: Nx.tensor(data, Keyword.put(opts, :backend, {EMLX.Backend, device: device()}))

  @doc "Copies a tensor to Nx.BinaryBackend."
  def to_bin(%Nx.Tensor{} = t), do: Nx.backend_copy(t, Nx.BinaryBackend)
  def to_bin(other), do: other

  @doc """
  Runs `fun` on the inputs on both backends and checks shape, type and
  values: exact for integers, within `tol` for floats, NaN equal to NaN.
  """
  def assert_same(fun, inputs, opts \\ []) do
    emlx_inputs = Enum.map(inputs, &Nx.backend_copy(&1, {EMLX.Backend, device: device()}))
    bin_inputs = Enum.map(inputs, &to_bin/1)

    got =
      Nx.with_default_backend({EMLX.Backend, device: device()}, fn -> apply(fun, emlx_inputs) end)

    want = Nx.with_default_backend(Nx.BinaryBackend, fn -> apply(fun, bin_inputs) end)
    assert_tensor(got, want, opts)
  end

  @doc """
  Runs `fun` compiled by EMLX on `args` (lists or numbers, made EMLX
  tensors) and by Nx's evaluator on Nx.BinaryBackend, and checks every
  tensor of the two results (any container) within `tol` (default 1.0e-5).
  """
  def assert_compiled_same(fun, args, tol \\ 1.0e-5) do
    got = apply(Nx.Defn.jit(fun, compiler: EMLX), Enum.map(args, &emlx/1))
    want = apply(fun, Enum.map(args, &Nx.tensor(&1, backend: Nx.BinaryBackend)))

    [got, want]
    |> Enum.map(&Nx.Defn.Composite.flatten_list([&1]))
    |> Enum.zip_with(fn [g, w] -> assert_tensor(g, w, tol: tol) end)
  end

  @doc "Checks an EMLX result against an expected tensor."
  def assert_tensor(%Nx.Tensor{} = got, %Nx.Tensor{} = want, opts \\ []) do
    assert got.shape == want.shape, "shape #{inspect(got.shape)} != #{inspect(want.shape)}"
    assert got.type == want.type, "type #{inspect(got.type)} != #{inspect(want.type)}"
    got = to_bin(got)

    case want.type do
      {t, _} when t in [:f, :bf, :c] ->
        tol = Keyword.get(opts, :tol, tolerance(want.type))

        assert Nx.all_close(got, want, atol: tol, rtol: tol, equal_nan: true) |> Nx.to_number() ==
                 1,
               "values differ:\n#{inspect(got)}\n#{inspect(want)}"

      _ ->
        assert Nx.to_binary(got) == Nx.to_binary(want),
               "values differ:\n#{inspect(got)}\n#{inspect(want)}"
    end
  end

  defp tolerance({:f, 16}), do: 1.0e-2
  defp tolerance({:bf, 16}), do: 5.0e-2
  defp tolerance({:f, 64}), do: 1.0e-6
  defp tolerance(_), do: 1.0e-5
end
