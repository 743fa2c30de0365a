defmodule EMLX.ConvTest do
  # Convolutions MLX's kernel does not take (issue 14): feature groups in
  # 3-D (Axon's depthwise and separable conv3d) and more than 3 spatial
  # dimensions, against Nx.BinaryBackend.
  use EMLX.Case, async: true

  defp input(shape), do: Nx.iota(shape, type: :f32) |> Nx.divide(10) |> Nx.sin()
  defp kernel(shape), do: Nx.iota(shape, type: :f32) |> Nx.divide(7) |> Nx.cos()

  test "depthwise 3-D convolution" do
    assert_same(
      &Nx.conv(&1, &2, feature_group_size: 4, padding: :same),
      [input({2, 4, 5, 4, 3}), kernel({8, 1, 3, 2, 2})],
      tol: 1.0e-4
    )
  end

  test "grouped 3-D convolution with strides, dilations and uneven padding" do
    assert_same(
      &Nx.conv(&1, &2,
        feature_group_size: 3,
        strides: [2, 1, 1],
        kernel_dilation: [1, 2, 1],
        input_dilation: [1, 1, 2],
        padding: [{1, 0}, {0, 2}, {1, -1}]
      ),
      [input({1, 6, 6, 7, 4}), kernel({9, 2, 2, 2, 3})],
      tol: 1.0e-4
    )
  end

  test "grouped 3-D convolution with batch groups" do
    assert_same(
      &Nx.conv(&1, &2, batch_group_size: 2),
      [input({4, 2, 3, 3, 3}), kernel({4, 2, 2, 2, 2})],
      tol: 1.0e-4
    )
  end

  test "a convolution of 4 spatial dimensions, grouped and not" do
    assert_same(&Nx.conv(&1, &2), [input({1, 2, 3, 3, 4, 3}), kernel({2, 2, 2, 2, 2, 2})],
      tol: 1.0e-4
    )

    assert_same(
      &Nx.conv(&1, &2, feature_group_size: 2, padding: :same),
      [input({1, 2, 3, 3, 4, 3}), kernel({4, 1, 2, 2, 2, 2})],
      tol: 1.0e-4
    )
  end

  test "the gradient of a depthwise 3-D convolution" do
    grad = fn x, k ->
      Nx.Defn.grad({x, k}, fn {x, k} -> Nx.conv(x, k, feature_group_size: 2) |> Nx.sum() end)
    end

    x = input({1, 2, 4, 4, 4})
    k = kernel({2, 1, 2, 2, 2})
    on_emlx = &Nx.backend_copy(&1, {EMLX.Backend, device: device()})
    {gx, gk} = grad.(on_emlx.(x), on_emlx.(k))
    assert %EMLX.Backend{} = gx.data
    {wx, wk} = grad.(to_bin(x), to_bin(k))
    assert_tensor(gx, wx, tol: 1.0e-4)
    assert_tensor(gk, wk, tol: 1.0e-4)
  end
end
