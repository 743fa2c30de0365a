defmodule EMLX.Types do
  @moduledoc """
  The Nx types EMLX stores, and how they map to MLX's.

  ## Native types

  u8..u64, s8..s64, f16, bf16, f32, f64 and c64 are MLX array types: their
  tensors are MLX arrays and every op runs in MLX. f64 works on both
  devices: MLX's CUDA backend has no f64, so on `:gpu` f64 work runs
  exactly on the CPU stream of the same command queue. MLX booleans read
  back as `{:u, 8}` in Nx.

  ## Emulated types

  MLX has no c128, f8 (`{:f, 8}`, E5M2, and `{:f8_e4m3fn, 8}`) or sub-byte
  integers (`{:u, 2}`, `{:u, 4}`, `{:s, 2}`, `{:s, 4}`). EMLX computes them
  exactly, as Nx defines them: a tensor of such a type holds its Nx binary
  (what `Nx.to_binary/1` gives; sub-byte types bit-packed, padded to whole
  bytes) in an MLX `uint8` array on its device and command queue, and every
  `Nx.Backend` callback with such a type in its result or in any argument
  runs `Nx.BinaryBackend`'s implementation of that callback: the arguments
  are read back, the op runs on the BEAM, and the result comes back as
  EMLX tensors (ordinary types as MLX arrays) on the op's device and
  queue. Results equal `Nx.BinaryBackend`'s bit for bit, errors included
  (its broadcast of a sub-byte tensor raises, for one). One deviation:
  `inspect/2` prints sub-byte tensors, which Nx.BinaryBackend (Nx 0.13.1)
  fails to print.

  The cost is Nx.BinaryBackend's, plus a read-back of the arguments and a
  copy of the result into MLX. On the 2-core CPU VM
  (`bench/emulated_types.exs`): a 256x256 c128 multiply+add took 124 ms
  (Nx.BinaryBackend alone 121 ms; c64 in MLX 0.9 ms), a 128x128 c128 dot
  2.15 s (Nx.BinaryBackend 2.13 s; c64 0.4 ms). The check that routes these
  types costs every other op a pattern match per tensor argument (about
  10 ns for an add, measured alone; an eager f32 add, about 1.4 us, did
  not change beyond its noise). Under `compiler: EMLX`, a `defn` with such
  a type anywhere in its expression runs op by op with `Nx.Defn.Evaluator`
  on `EMLX.Backend` (see `EMLX.Defn`).

  MLX-only features take native types only and raise `ArgumentError`
  naming the type: `EMLX.Fast`, `EMLX.Quantization`, `.safetensors` files
  and `EMLX.Distributed`. `Nx.to_pointer/2` and `EMLX.Backend.from_nx/1`
  give the stored bytes (Nx's layout of the type), a uint8 buffer.
  """

  @native [
    {:u, 8},
    {:u, 16},
    {:u, 32},
    {:u, 64},
    {:s, 8},
    {:s, 16},
    {:s, 32},
    {:s, 64},
    {:f, 16},
    {:bf, 16},
    {:f, 32},
    {:f, 64},
    {:c, 64}
  ]

  @emulated [{:c, 128}, {:f, 8}, {:f8_e4m3fn, 8}, {:u, 2}, {:u, 4}, {:s, 2}, {:s, 4}]

  @typedoc "A type as MLX arrays report it: an Nx type, or `:bool`."
  @type mlx_type :: Nx.Type.t() | :bool

  @doc """
  `is_emulated/1` on a type's kind and size: every op checks its arguments'
  types with it, as a pattern `{kind, size}` and this guard (about 4 ns an
  argument; comparing whole type tuples costs several times that).
  """
  defguard is_emulated(kind, size)
           when (size < 8 and (kind === :u or kind === :s)) or
                  (size === 8 and (kind === :f or kind === :f8_e4m3fn)) or
                  (size === 128 and kind === :c)

  @doc """
  True for the types MLX lacks, which EMLX computes with Nx.BinaryBackend's
  implementation (c128, f8, f8_e4m3fn, u2, u4, s2, s4). A guard.
  """
  defguard is_emulated(type)
           when is_tuple(type) and tuple_size(type) == 2 and
                  is_emulated(elem(type, 0), elem(type, 1))

  @doc "Every Nx type EMLX.Backend stores: the native ones and the emulated ones."
  @spec supported() :: [Nx.Type.t()]
  def supported, do: @native ++ @emulated

  @doc "The Nx types that are MLX array types."
  @spec native() :: [Nx.Type.t()]
  def native, do: @native

  @doc "The Nx types MLX lacks, computed with Nx.BinaryBackend's implementation."
  @spec emulated() :: [Nx.Type.t()]
  def emulated, do: @emulated

  @doc "Whether `type` is one MLX lacks (see `is_emulated/1`)."
  @spec emulated?(term()) :: boolean()
  def emulated?(type), do: is_emulated(type)

  @doc """
  Raises `ArgumentError` unless EMLX.Backend stores `type`; `context` (the
  callback or op being run) goes into the message.
  """
  @spec check!(Nx.Type.t(), atom() | String.t()) :: :ok
  # one clause per type (a pattern match, not a list scan: every op checks)
  for type <- @native ++ @emulated,
      do: def(check!(unquote(Macro.escape(type)), _context), do: :ok)

  def check!(type, context) do
    raise ArgumentError,
          "EMLX.Backend: #{inspect(type)} is not a type EMLX stores (in #{context}); " <>
            "types: " <> Enum.map_join(@native ++ @emulated, ", ", &Nx.Type.to_string/1)
  end

  @doc """
  Raises `ArgumentError` unless `type` is an MLX array type: `context`
  (the callback, op or feature) needs an MLX array of it.
  """
  @spec native!(Nx.Type.t(), atom() | String.t()) :: :ok
  for type <- @native, do: def(native!(unquote(Macro.escape(type)), _context), do: :ok)

  def native!(type, context) when is_emulated(type) do
    raise ArgumentError,
          "EMLX: MLX has no #{Nx.Type.to_string(type)} type, and #{context} needs an MLX " <>
            "array of it (EMLX.Backend computes #{Nx.Type.to_string(type)} tensors with " <>
            "Nx.BinaryBackend's implementation, op by op; see EMLX.Types); MLX types: " <>
            Enum.map_join(@native, ", ", &Nx.Type.to_string/1)
  end

  def native!(type, context), do: check!(type, context)

  @doc "The Nx type of an MLX array's type (`:bool` is `{:u, 8}`)."
  @spec to_nx(mlx_type) :: Nx.Type.t()
  def to_nx(:bool), do: {:u, 8}
  def to_nx(type), do: type

  @doc "Bytes per element."
  @spec elem_bytes(mlx_type) :: pos_integer()
  def elem_bytes(type), do: type |> to_nx() |> elem(1) |> div(8)
end
