defmodule EMLX.KernelConstantsTest do
  # MLX compiles each new fused kernel of a compiled program with the system
  # C++ compiler on the CPU (0.7-1.1 s a kernel on a 2-core machine), keeping
  # the libraries in TMPDIR/mlx/<version>/cpu. A scalar constant written into
  # a kernel made every new value a new kernel; the values are now inputs of
  # the compiled function. Not async: it counts the libraries there.
  use EMLX.Case, async: false
  import Bitwise

  defp kernels do
    dir = Path.join([System.tmp_dir!(), "mlx", List.to_string(EMLX.NIF.mlx_version()), "cpu"])
    dir |> Path.join("*.so") |> Path.wildcard() |> length()
  end

  defp scaled(k),
    do: fn x -> x |> Nx.multiply(k) |> Nx.add(0.375) |> Nx.exp() |> Nx.subtract(x) end

  test "a constant's new value reuses the fused kernel (no new compile), with the new value's results" do
    x = Nx.iota({16}, type: :f32, backend: {EMLX.Backend, device: :cpu})
    jit = &Nx.Defn.jit(scaled(&1), compiler: EMLX, device: :cpu)
    Nx.to_binary(jit.(0.125).(x))
    before = kernels()

    for k <- [0.25, -0.5, 0.0625] do
      want = scaled(k).(Nx.backend_copy(x, Nx.BinaryBackend))
      assert_tensor(jit.(k).(x), want)
    end

    assert kernels() == before
  end

  test "with fuse_after: 2 a plan's first two calls build no kernel, and its third fuses" do
    Application.put_env(:emlx, :fuse_after, 2)
    on_exit(fn -> Application.delete_env(:emlx, :fuse_after) end)

    # a chain of 20 multiplies and adds picked by random bits: a kernel no
    # earlier run built
    bits = :rand.uniform(1 <<< 20)

    f = fn x ->
      Enum.reduce(0..19, x, fn i, acc ->
        if (bits >>> i &&& 1) == 1, do: Nx.multiply(acc, 0.75), else: Nx.add(acc, 0.5)
      end)
    end

    x = Nx.iota({16}, type: :f32, backend: {EMLX.Backend, device: :cpu}) |> Nx.divide(7)
    want = f.(Nx.backend_copy(x, Nx.BinaryBackend))
    jit = Nx.Defn.jit(f, compiler: EMLX, device: :cpu)
    before = kernels()

    assert_tensor(jit.(x), want)
    assert_tensor(jit.(x), want)
    assert kernels() == before
    assert_tensor(jit.(x), want)
    assert kernels() > before
  end
end
