defmodule EMLX.DeviceTest do
  @moduledoc """
  What the GPU lacks runs exactly on the CPU stream of the same queue, and
  results stay on the test device. Run on the GPU with
  `EMLX_TEST_DEVICE=gpu mix test`; on the CPU the same assertions hold.
  """
  use EMLX.Case, async: true
  import Nx.Defn

  defp on_device?(%Nx.Tensor{data: %EMLX.Backend{device: d}}), do: d == device()

  defp rel_err(got, want) do
    got = Nx.backend_copy(got, Nx.BinaryBackend) |> Nx.as_type(:f64)
    want = Nx.backend_copy(want, Nx.BinaryBackend) |> Nx.as_type(:f64)
    Nx.to_number(Nx.divide(Nx.LinAlg.norm(Nx.subtract(got, want)), Nx.LinAlg.norm(want)))
  end

  defp random(shape, type, seed) do
    key = Nx.Random.key(seed) |> Nx.backend_copy(Nx.BinaryBackend)
    {t, _} = Nx.Random.normal(key, shape: shape, type: type)
    Nx.backend_copy(t, Nx.BinaryBackend)
  end

  test "float64 is computed in float64 (transcendental functions, matmul, reductions)" do
    xs = [0.1, 1.0, 2.5, -3.75]
    x = emlx(xs, type: :f64)
    y = Nx.exp(Nx.sin(x))
    assert on_device?(y) and y.type == {:f, 64}

    for {got, want} <- Enum.zip(Nx.to_list(y), Enum.map(xs, &:math.exp(:math.sin(&1)))) do
      assert_in_delta got, want, 1.0e-15
    end

    a = random({24, 24}, :f64, 1)
    got = Nx.dot(Nx.backend_copy(a, {EMLX.Backend, device: device()}), a)
    assert on_device?(got)
    assert rel_err(got, Nx.dot(a, a)) < 1.0e-14
    # 1 + 1e-12 is not representable in float32
    assert Nx.to_number(Nx.sum(emlx([1.0, 1.0e-12], type: :f64))) == 1.0 + 1.0e-12
  end

  test "f32 matmul is full float32 by default (no TF32)" do
    a = random({512, 512}, :f32, 2)
    b = random({512, 512}, :f32, 3)
    got = Nx.dot(Nx.backend_copy(a, {EMLX.Backend, device: device()}), b)
    # the float64 reference, on EMLX's CPU (Nx.BinaryBackend takes minutes here)
    cpu = {EMLX.Backend, device: :cpu}

    want =
      Nx.dot(Nx.backend_copy(Nx.as_type(a, :f64), cpu), Nx.backend_copy(Nx.as_type(b, :f64), cpu))

    # float32 accumulation lands near 1e-6 here; TF32 would be near 1e-3
    assert rel_err(got, want) < 2.0e-5
  end

  test "linear algebra returns tensors on the test device" do
    a = emlx([[4.0, 1.0, 2.0], [1.0, 3.0, 0.5], [2.0, 0.5, 5.0]])
    {q, r} = Nx.LinAlg.qr(a)
    assert on_device?(q) and on_device?(r)
    assert_tensor(Nx.dot(q, r), to_bin(a), tol: 1.0e-5)
    {eigenvalues, _} = Nx.LinAlg.eigh(a)
    assert on_device?(eigenvalues)
    l = Nx.LinAlg.cholesky(a)
    assert_tensor(Nx.dot(l, Nx.transpose(l)), to_bin(a), tol: 1.0e-5)
    x = Nx.LinAlg.solve(a, emlx([1.0, 2.0, 3.0]))
    assert_tensor(Nx.dot(a, x), to_bin(emlx([1.0, 2.0, 3.0])), tol: 1.0e-5)
    assert_in_delta Nx.to_number(Nx.LinAlg.determinant(a)), 44.0, 1.0e-4
  end

  test "64-bit integer scatter" do
    t = emlx([1, 2, 3, 4], type: :s64)
    got = Nx.indexed_add(t, emlx([[0], [2], [0]]), emlx([10, 20, 2 ** 40], type: :s64))
    assert on_device?(got)
    assert Nx.to_list(got) == [1 + 10 + 2 ** 40, 2, 23, 4]
  end

  test "float64 under the compiler" do
    f = Nx.Defn.jit(fn x -> Nx.sum(Nx.exp(x)) end, compiler: EMLX)
    got = f.(emlx([0.5, 1.5], type: :f64))
    assert on_device?(got) and got.type == {:f, 64}
    assert_in_delta Nx.to_number(got), :math.exp(0.5) + :math.exp(1.5), 1.0e-14
  end

  defn tanh_loop(x) do
    {x, _} = while {x, i = 0}, i < 3, do: {Nx.tanh(x) + 1.5, i + 1}
    x
  end

  # (MLX's eval makes one synchronizer over what it evaluates, on the GPU
  # stream when a GPU array comes first, and a GPU primitive refuses
  # float64 inputs: "float64 is not supported on the GPU" on :gpu, in a
  # loop's first read of its state; found by test/emlx/defn_fuzz_test.exs)
  test "a float64 loop, and float64 evaluated with other types" do
    got = Nx.Defn.jit(&tanh_loop/1, compiler: EMLX).(emlx([0.5, 1.0], type: :f64))
    assert on_device?(got) and got.type == {:f, 64}

    want =
      Enum.map([0.5, 1.0], fn v -> Enum.reduce(1..3, v, fn _, a -> :math.tanh(a) + 1.5 end) end)

    assert_in_delta_list(Nx.to_list(got), want, 1.0e-14)

    a = Nx.exp(emlx([0.5], type: :f64))
    b = Nx.exp(emlx([0.5]))
    assert [%Nx.Tensor{}, %Nx.Tensor{}] = EMLX.eval([b, a])
    assert Nx.to_list(a) == [:math.exp(0.5)]
  end

  defp assert_in_delta_list(got, want, delta),
    do: Enum.zip_with(got, want, &assert_in_delta(&1, &2, delta))

  test "copies between the CPU and the test device keep values" do
    x = emlx([1.5, -2.0, 3.25])
    cpu = Nx.backend_copy(x, {EMLX.Backend, device: :cpu})
    back = Nx.backend_copy(cpu, {EMLX.Backend, device: device()})
    assert on_device?(back)
    assert Nx.to_list(back) == [1.5, -2.0, 3.25]
    assert Nx.to_list(Nx.add(back, cpu)) == [3.0, -4.0, 6.5]
  end
end
