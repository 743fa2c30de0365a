defmodule EMLX.Differential.Cases.Numeric do
  @moduledoc false
  # Differential cases (see EMLX.Differential.Cases): windows, convolution,
  # reductions with a function, FFT, linear algebra, Nx.Block functions and
  # larger inputs.

  use EMLX.Differential.Cases

  # {op, type classes, domain}
  @windows [
    {:window_sum, :real, :any},
    {:window_product, :real, {:range, -1.5, 1.5}},
    {:window_max, :real, :any},
    {:window_min, :real, :any}
  ]

  # {shape, window dimensions, options}
  @window_variants [
    {{7, 3}, {2, 2}, []},
    {{7, 3}, {3, 1}, [strides: [2, 1]]},
    {{7, 3}, {2, 2}, [padding: :same]},
    {{3, 1, 5}, {1, 1, 2}, [strides: [1, 1, 2]]},
    {{3, 1, 5}, {2, 1, 2}, [padding: [{1, 0}, {0, 1}, {1, 1}], window_dilations: [1, 1, 2]]},
    {{1}, {1}, []}
  ]

  # {shape, source shape, window dimensions, options}
  @window_scatter_variants [
    {{4, 6}, {2, 2}, {2, 3}, [strides: [2, 3]]},
    {{7, 3}, {6, 2}, {2, 2}, [strides: [1, 1]]},
    {{7, 3}, {4, 2}, {2, 2}, [strides: [2, 2], padding: :same]}
  ]

  # {input shape, kernel shape, options}
  @convs [
    {{1, 2, 5, 5}, {3, 2, 2, 2}, []},
    {{2, 1, 6}, {2, 1, 3}, [padding: :same, kernel_dilation: 2]},
    {{1, 2, 5, 5}, {4, 1, 3, 3},
     [feature_group_size: 2, strides: [2, 1], padding: [{1, 1}, {0, 2}]]},
    {{2, 3, 4}, {2, 3, 2}, [input_dilation: 2]},
    {{4, 2, 5}, {2, 2, 3}, [batch_group_size: 2]},
    {{1, 4, 4, 1}, {1, 1, 2, 2},
     [input_permutation: [0, 3, 1, 2], output_permutation: [0, 3, 1, 2]]}
  ]

  @doc "The cases, in table order."
  def cases do
    ## Windows, conv, function reductions, FFT, linear algebra

    # {op, type classes, domain}
    windowed =
      for {op, classes, domain} <- @windows,
          type <- D.types_of(classes),
          {shape, window, opts} <- @window_variants do
        D.new_case({Nx, op}, [t(type, shape, domain), window, opts], group: "#{op}")
      end ++
        for op <- [:window_scatter_max, :window_scatter_min],
            type <- D.types_of(:real),
            {shape, source, window, opts} <- @window_scatter_variants do
          # Integers within s32: Nx.BinaryBackend's window_scatter_* compares
          # u32, u64 and s64 values as if they were s32.
          domain = if D.class(type) in [:u, :s], do: {:cast, {:s, 32}}, else: :any

          D.new_case(
            {Nx, op},
            [t(type, shape, domain), t(type, source, :small), t(type, {}, :small), window, opts],
            group: "#{op}"
          )
        end ++
        for {fun, acc} <- [add: 0, multiply: 1, max: 0, min: 0],
            type <- D.types_of(:real),
            opts <- [[axes: [0]], [axes: [1], keep_axes: true], []] do
          domain = if fun == :multiply, do: {:range, -1.5, 1.5}, else: :any

          D.new_case(
            {Nx, :reduce},
            [t(type, {7, 3}, domain), t(type, {}, {:values, [acc]}), opts, {:fun, Nx, fun, 2}],
            group: "reduce"
          )
        end ++
        for fun <- [:add, :max],
            # Nx.BinaryBackend's window_reduce only works on s32 and f32 (it
            # rejects the accumulator of every other type, and misreads s64).
            type <- [{:s, 32}, {:f, 32}],
            {shape, window, opts} <- Enum.take(@window_variants, 3) do
          D.new_case(
            {Nx, :window_reduce},
            [t(type, shape), t(type, {}, {:values, [0]}), window, opts, {:fun, Nx, fun, 2}],
            group: "window_reduce"
          )
        end

    convs =
      for type <- [{:f, 16}, {:bf, 16}, {:f, 32}, {:f, 64}, {:s, 32}],
          {sa, sk, opts} <- @convs do
        D.new_case({Nx, :conv}, [t(type, sa, :small), t(type, sk, :small), opts],
          group: "conv #{D.type_name(type)}"
        )
      end

    ffts =
      for op <- [:fft, :ifft],
          # (the FFT of f64 is c128, which MLX lacks)
          type <- [{:c, 64}, {:f, 32}, {:f, 16}, {:s, 32}],
          {shape, opts} <- [
            {{7, 3}, []},
            {{8}, [length: 5]},
            {{8}, [length: 12]},
            {{4, 6}, [axis: 0]}
          ] do
        D.new_case({Nx, op}, [t(type, shape, :small), opts], group: "#{op}")
      end

    linalg =
      for type <- [{:f, 32}, {:f, 64}] do
        [
          {:triangular_solve, {Nx.LinAlg, :triangular_solve},
           [t(type, {3, 3}, {:lower, 3}), t(type, {3}), []]},
          {:triangular_solve, {Nx.LinAlg, :triangular_solve},
           [t(type, {3, 3}, {:lower, 3}), t(type, {3, 2}), [left_side: true]]},
          {:triangular_solve, {Nx.LinAlg, :triangular_solve},
           [t(type, {3, 3}, {:upper, 3}), t(type, {3}), [lower: false]]},
          {:triangular_solve, {Nx.LinAlg, :triangular_solve},
           [t(type, {3, 3}, {:lower, 3}), t(type, {2, 3}), [left_side: false]]},
          {:triangular_solve, {Nx.LinAlg, :triangular_solve},
           [t(type, {3, 3}, {:lower, 3}), t(type, {3}), [transform_a: :transpose]]},
          {:cholesky, {Nx.LinAlg, :cholesky}, [t(type, {3, 3}, {:spd, 3})]},
          {:cholesky, {Nx.LinAlg, :cholesky}, [t(type, {5, 5}, {:spd, 5})]},
          {:qr, {D, :qr_product}, [t(type, {4, 3})]},
          {:qr, {D, :qr_product}, [t(type, {3, 3})]},
          {:eigh, {D, :eigh_reconstruct}, [t(type, {3, 3}, {:spd, 3})]},
          {:svd, {D, :svd_reconstruct}, [t(type, {3, 3}, {:spd, 3})]},
          {:svd, {D, :svd_reconstruct}, [t(type, {3, 3})]},
          {:lu, {Nx.LinAlg, :lu}, [t(type, {3, 3}, {:spd, 3})]},
          {:lu, {Nx.LinAlg, :lu}, [t(type, {4, 4})]},
          {:determinant, {Nx.LinAlg, :determinant}, [t(type, {3, 3})]},
          {:determinant, {Nx.LinAlg, :determinant}, [t(type, {1, 1})]},
          {:solve, {Nx.LinAlg, :solve}, [t(type, {3, 3}, {:spd, 3}), t(type, {3})]},
          {:solve, {Nx.LinAlg, :solve}, [t(type, {4, 4}, {:spd, 4}), t(type, {4, 2})]}
        ]
      end
      |> List.flatten()
      |> Enum.map(fn {op, call, args} ->
        D.new_case(call, args,
          group: "linalg #{op}",
          # eigh and svd iterate until a threshold (eps: 1.0e-4 by default),
          # so rounding differences change where they stop.
          tol:
            if(op in [:eigh, :svd],
              do: %{{:f, 32} => 1.0e-3, {:f, 64} => 1.0e-3},
              else: %{{:f, 32} => 1.0e-4, {:f, 64} => 1.0e-9}
            )
        )
      end)

    # Nx functions that reach the backend as Nx.Block structs.
    blocks =
      (for type <- D.types_of(:real), {shape, k} <- [{{7, 3}, 2}, {{3, 1, 5}, 3}, {{9}, 4}] do
         D.new_case({Nx, :top_k}, [t(type, shape), [k: k]], group: "top_k")
       end ++
         for type <- D.types_of(:float),
             {shape, opts} <- [{{}, []}, {{2}, []}, {{2}, [equal_nan: true]}, {{7, 3}, [atol: 5]}] do
           domain = if D.class(type) == :f, do: :ties_nan, else: :ties

           D.new_case({Nx, :all_close}, [t(type, shape, domain), t(type, shape, domain), opts],
             group: "all_close"
           )
         end ++
         for op <- [:fft2, :ifft2],
             type <- [{:c, 64}, {:f, 32}],
             {shape, opts} <- [{{4, 6}, []}, {{2, 3, 4}, [lengths: [2, 5]]}] do
           D.new_case({Nx, op}, [t(type, shape, :small), opts], group: "#{op}")
         end ++
         for {shape, opts} <- [{{8}, []}, {{7, 3}, [length: 4]}, {{3, 5}, [axis: 0]}] do
           [
             D.new_case({Nx, :rfft}, [t({:f, 32}, shape, :small), opts], group: "rfft"),
             D.new_case({Nx, :irfft}, [t({:c, 64}, shape, :small), opts], group: "irfft")
           ]
         end)
      |> List.flatten()

    # Larger inputs (37x65, odd sizes): MLX's vectorized CPU paths and their tails.
    big = {37, 65}

    large =
      for type <- [{:u, 8}, {:s, 32}, {:s, 64}, {:f, 16}, {:bf, 16}, {:f, 32}, {:f, 64}] do
        tol = %{{:f, 16} => 2.0e-2, {:bf, 16} => 1.0e-1}

        [
          D.new_case({Nx, :add}, [t(type, big), t(type, big)], group: "large"),
          D.new_case({Nx, :multiply}, [t(type, big), t(type, {65})], group: "large"),
          D.new_case({Nx, :exp}, [t(type, big, {:range, -5, 5})], group: "large"),
          D.new_case({Nx, :sum}, [t(type, big, :small), [axes: [0]]], group: "large", tol: tol),
          D.new_case({Nx, :sum}, [t(type, big, :small), []], group: "large", tol: tol),
          D.new_case({Nx, :reduce_max}, [t(type, big), [axes: [1]]], group: "large"),
          D.new_case({Nx, :argmax}, [t(type, big), [axis: 0]], group: "large"),
          D.new_case({Nx, :argmin}, [t(type, big, :ties), [axis: 1, tie_break: :high]],
            group: "large"
          ),
          # Running sums in half precision: the absolute error follows the
          # partial sums (up to ~40 here; one f16 ulp there is 0.03, bf16 0.25).
          D.new_case({Nx, :cumulative_sum}, [t(type, big, :small), [axis: 1]],
            group: "large",
            tol: %{{:f, 16} => {2.0e-2, 0.1}, {:bf, 16} => {1.0e-1, 0.5}}
          ),
          D.new_case({Nx, :sort}, [t(type, big), [axis: 1, direction: :desc]], group: "large"),
          D.new_case({Nx, :argsort}, [t(type, big, :ties), [axis: 0, stable: true]],
            group: "large"
          ),
          D.new_case({Nx, :transpose}, [t(type, big), []], group: "large"),
          D.new_case(
            {Nx, :dot},
            [t(type, big, :small), [1], [], t(type, {65, 9}, :small), [0], []],
            group: "large",
            tol: tol
          )
        ]
      end
      |> List.flatten()

    windowed ++ convs ++ ffts ++ linalg ++ blocks ++ large
  end
end
