defmodule EMLX.KernelConstantsTest do
  # MLX compiles each new fused kernel of a compiled program with the system
  # C++ compiler on the CPU (0.7-1.1 s a kernel on a 2-core machine), keeping
  # the libraries in TMPDIR/mlx/<version>/cpu. A scalar constant written into
  # a kernel made every new value a new kernel; the values are now inputs of
  # the compiled function. Not async: it counts the libraries there.
  use EMLX.Case, async: false

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

    # (MLX's own element-wise ops, which its JIT fuses; a chain no other
    # test builds, its kernel removed from MLX's on-disk cache first)
    f = fn x -> x |> Nx.multiply(0.5) |> Nx.negate() |> Nx.abs() |> Nx.floor() end
    glob = Path.join(System.tmp_dir!(), "mlx/*/cpu/lib*Multiply*Negative*Abs*Floor*.so")
    Enum.each(Path.wildcard(glob), &File.rm!/1)

    x = Nx.iota({64}, type: :f32, backend: {EMLX.Backend, device: :cpu}) |> Nx.subtract(20)
    want = f.(Nx.backend_copy(x, Nx.BinaryBackend))
    jit = Nx.Defn.jit(f, compiler: EMLX, device: :cpu)

    assert_tensor(jit.(x), want)
    assert_tensor(jit.(x), want)
    assert Path.wildcard(glob) == []
    assert_tensor(jit.(x), want)
    assert Path.wildcard(glob) != []
  end
end
