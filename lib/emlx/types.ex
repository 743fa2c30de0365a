defmodule EMLX.Types do
  @moduledoc """
  The Nx types EMLX stores, and how they map to MLX's.

  MLX has no f8, c128 or sub-byte integer types. f64 works on both devices:
  MLX's CUDA backend has no f64, so on `:gpu` f64 work runs exactly on the
  CPU stream of the same command queue. MLX booleans read back as `{:u, 8}`
  in Nx.
  """

  @supported [
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

  @typedoc "A type as MLX arrays report it: an Nx type, or `:bool`."
  @type mlx_type :: Nx.Type.t() | :bool

  @doc "The Nx types EMLX stores."
  @spec supported() :: [Nx.Type.t()]
  def supported, do: @supported

  @doc """
  Raises `ArgumentError` unless EMLX stores `type` (the same on both
  devices); `context` (the callback or op being run) goes into the message.
  """
  @spec check!(Nx.Type.t(), atom()) :: :ok
  # one clause per type (a pattern match, not a list scan: every op checks)
  for type <- @supported, do: def(check!(unquote(Macro.escape(type)), _context), do: :ok)

  def check!(type, context) do
    raise ArgumentError,
          "EMLX.Backend: MLX has no #{Nx.Type.to_string(type)} type " <>
            "(in #{context}); supported types: " <>
            Enum.map_join(@supported, ", ", &Nx.Type.to_string/1)
  end

  @doc "The Nx type of an MLX array's type (`:bool` is `{:u, 8}`)."
  @spec to_nx(mlx_type) :: Nx.Type.t()
  def to_nx(:bool), do: {:u, 8}
  def to_nx(type), do: type

  @doc "Bytes per element."
  @spec elem_bytes(mlx_type) :: pos_integer()
  def elem_bytes(type), do: type |> to_nx() |> elem(1) |> div(8)
end
