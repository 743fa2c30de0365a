defmodule EMLX.VMExitTest do
  @moduledoc """
  The VM exits (erlang:halt, as `elixir script.exs` ends) after eager work
  whose BLAS calls ran on MLX's CPU stream. Debian 12's OpenBLAS (0.3.21)
  stops its threads in its library destructor at exit, and that join hung
  for good after this script's work (every run of it on the 2-core VM); the
  NIF now lets every queue finish its stream's work first, from an exit
  handler (`emlx_queues_quiesce`). On a GPU host, with Debian's OpenBLAS,
  an MLX thread's "cudaSetDevice ... driver shutting down" then escaped
  during the libraries' teardown and aborted the VM (status 134); after
  the exit handler such an exception ends the process with the exit's
  status (`emlx_exit_begin`). The script runs in its own OS process.
  """
  use ExUnit.Case, async: true
  @moduletag timeout: 180_000

  @script ~S"""
  {:ok, _} = Application.ensure_all_started(:emlx)
  cpu = {EMLX.Backend, device: :cpu}
  q = EMLX.Application.default_worker(:cpu)
  a = Nx.tensor([1.0, 2.0, 3.0, 4.0], backend: cpu)
  b = Nx.tensor([0.5, 0.5, 0.5, 0.5], backend: cpu)
  big = Nx.iota({1536, 1536}, type: :f32, backend: cpu) |> Nx.divide(1.0e6)

  for _round <- 1..3, mode <- [:same, :chained, :nx] do
    EMLX.NIF.queue_drain(q) |> EMLX.Worker.await()
    m = Nx.dot(big, big)
    :ok = EMLX.NIF.async_eval(q, [m.data.ref])

    case mode do
      :same -> for _ <- 1..1500, do: EMLX.NIF.op(q, :add, [a.data.ref, b.data.ref], nil)
      :chained -> Enum.reduce(1..1500, a, fn _, acc -> Nx.add(acc, b) end)
      :nx -> Enum.reduce(1..1500, a, fn _, acc -> Nx.multiply(acc, b) end)
    end
  end

  EMLX.NIF.queue_drain(q) |> EMLX.Worker.await()
  IO.puts("posted")
  """

  # Unevaluated graphs left behind as the VM stops: the worker frees them
  # while the exit handler quiesces the queues. MLX's CPU allocator, a
  # function-local static made at its first use, was registered after that
  # handler and so destroyed before it ran: in about a third of the runs of
  # this script glibc aborted at exit ("malloc(): unaligned fastbin chunk
  # detected") or the VM segfaulted (emlx_statics_init; workers also park
  # once quiesced).
  @lazy_script ~S"""
  {:ok, _} = Application.ensure_all_started(:emlx)
  Nx.default_backend({EMLX.Backend, device: :cpu})
  key = Nx.Random.key(1)
  {_a, _} = Nx.Random.normal(key, shape: {64, 64})
  {_b, _} = Nx.Random.normal(key, shape: {64})
  x = Nx.iota({64, 64}, type: :f32)
  _chain = Enum.reduce(1..2000, x, fn _, acc -> Nx.add(acc, 1) end)
  IO.puts("left")
  """

  test "the VM exits after eager work with BLAS calls on MLX's CPU stream" do
    {out, status} = run_script(@script)
    assert out =~ "posted"
    assert status == 0, "the script's VM did not exit by itself (status #{status}):\n#{out}"
  end

  test "the VM exits cleanly with unevaluated graphs left behind" do
    for run <- 1..8 do
      {out, status} = run_script(@lazy_script)
      assert out =~ "left"
      assert status == 0, "run #{run}: the script's VM ended with status #{status}:\n#{out}"
      refute out =~ ~r/malloc|free\(\)|corrupt|Segmentation/, "run #{run}:\n#{out}"
    end
  end

  defp run_script(script) do
    path = Path.join(System.tmp_dir!(), "emlx_vm_exit_#{System.unique_integer([:positive])}.exs")
    File.write!(path, script)

    try do
      paths =
        for p <- :code.get_path(), String.contains?(to_string(p), "_build"), do: to_string(p)

      args = ["-s", "KILL", "90", System.find_executable("elixir")]
      args = args ++ Enum.flat_map(paths, &["-pa", &1]) ++ [path]
      System.cmd("timeout", args, stderr_to_stdout: true)
    after
      File.rm(path)
    end
  end
end
