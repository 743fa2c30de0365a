defmodule EMLX.Backend.LinAlg do
  @moduledoc false
  # Nx's linear-algebra blocks (`Nx.Block.LinAlg.*`) for EMLX.Backend: MLX's
  # LAPACK kernels by default, or Nx's own algorithms.
  #
  # `config :emlx, linalg: :nx` takes Nx's algorithms (on MLX ops), not
  # MLX's kernels: Nx's digits and signs, at a large cost in speed. Complex
  # matrices take them too. Eagerly, the algorithm (the block's callback, a
  # defn full of loops) is compiled by EMLX on the matrices' device, so its
  # loops run on the worker thread; called from Nx's evaluator it would read
  # every iteration's condition back. Inside a recording, the compiler has
  # already made the callback the block's traced body.

  alias Nx.Tensor, as: T

  @blocks [
    Nx.Block.LinAlg.QR,
    Nx.Block.LinAlg.SVD,
    Nx.Block.LinAlg.Eigh,
    Nx.Block.LinAlg.LU,
    Nx.Block.LinAlg.Cholesky,
    Nx.Block.LinAlg.Solve,
    Nx.Block.LinAlg.Determinant
  ]

  @doc "The block structs this module serves."
  def blocks, do: @blocks

  @doc """
  How EMLX.Backend runs the block `struct` over `args`: `{:one, op, op_args}`
  or `{:multi, op, op_args}` (MLX's kernel, one result or several), or
  `:nx` (Nx's algorithm, `nx/3`).
  """
  def plan(struct, args) do
    {tensors, _opts} = split(args)

    cond do
      not native?(tensors) -> :nx
      small?(tensors) -> small(struct, tensors)
      true -> native(struct, tensors)
    end
  end

  # Float32 matrices (integer ones become float32) of at most
  # `config :emlx, :linalg_small` rows and columns (16 by default; 0 turns
  # it off) take Nx's own algorithms in Nx's rounding, computed on the host
  # (c_src/shim/kernels_nx_linalg.cpp): Nx.BinaryBackend's digits, bit for
  # bit. LAPACK's last digits differ, as its order of operations does.
  defp small?([%T{shape: shape} | _] = tensors) do
    max = Application.get_env(:emlx, :linalg_small, 16)
    rank = tuple_size(shape)

    rank >= 2 and elem(shape, rank - 1) <= max and elem(shape, rank - 2) <= max and
      Enum.all?(tensors, fn %T{type: {kind, size}} ->
        kind in [:s, :u] or {kind, size} == {:f, 32}
      end)
  end

  defp small(%Nx.Block.LinAlg.QR{mode: mode, eps: eps}, [t]),
    do: {:multi, :nx_qr, [t, mode == :complete, eps * 1.0]}

  defp small(%Nx.Block.LinAlg.LU{}, [t]), do: {:multi, :nx_lu, [t]}

  # The thin SVD (full_matrices?: false, what pinv and least_squares take)
  # is Nx's composition, the eigh of the Gram matrix, on EMLX's ops (its
  # eigh is the kernel above): 0.5-0.7 ms at these sizes. The full SVD stays
  # LAPACK's: Nx's QDWH iteration takes about 7 ms there (0.1-0.2 ms).
  defp small(%Nx.Block.LinAlg.SVD{full_matrices?: false}, [_t]), do: :nx
  defp small(%Nx.Block.LinAlg.SVD{} = svd, tensors), do: native(svd, tensors)

  defp small(%Nx.Block.LinAlg.Eigh{eps: eps, max_iter: max_iter}, [t]),
    do: {:multi, :nx_eigh, [t, eps * 1.0, max_iter]}

  defp small(%Nx.Block.LinAlg.Cholesky{}, [t]), do: {:one, :nx_cholesky, [t]}
  defp small(%Nx.Block.LinAlg.Solve{}, [a, b]), do: {:one, :nx_solve, [a, b]}
  defp small(%Nx.Block.LinAlg.Determinant{}, [t]), do: {:one, :nx_determinant, [t]}

  # A block's arguments: its tensors, then its options (a keyword list).
  defp split(args), do: Enum.split_while(args, &(not is_list(&1)))

  defp native(%Nx.Block.LinAlg.QR{mode: mode}, [t]), do: {:multi, :qr, [t, mode == :complete]}
  defp native(%Nx.Block.LinAlg.SVD{full_matrices?: full}, [t]), do: {:multi, :svd, [t, full]}
  defp native(%Nx.Block.LinAlg.Eigh{}, [t]), do: {:multi, :eigh, [t]}
  defp native(%Nx.Block.LinAlg.LU{}, [t]), do: {:multi, :lu, [t]}
  defp native(%Nx.Block.LinAlg.Cholesky{}, [t]), do: {:one, :cholesky, [t]}
  defp native(%Nx.Block.LinAlg.Solve{}, [a, b]), do: {:one, :solve, [a, b]}
  defp native(%Nx.Block.LinAlg.Determinant{}, [t]), do: {:one, :determinant, [t]}

  defp native?(tensors) do
    Application.get_env(:emlx, :linalg, :native) == :native and
      Enum.all?(tensors, fn %T{type: {kind, _}} -> kind != :c end)
  end

  @doc "Nx's algorithm for the block `struct` (its callback `fun`) over `args`."
  def nx(struct, args, fun) do
    {tensors, opts} = split(args)

    case tensors do
      [%T{data: %EMLX.Backend{device: device}} | _] ->
        if EMLX.Defn.Recorder.active?() do
          apply(fun, [struct | args])
        else
          run = fn tuple -> apply(fun, [struct | Tuple.to_list(tuple) ++ opts]) end
          Nx.Defn.jit_apply(run, [List.to_tuple(tensors)], compiler: EMLX, device: device)
        end

      _ ->
        apply(fun, [struct | args])
    end
  end
end
