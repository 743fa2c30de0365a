defmodule EMLX.Types do
  @moduledoc """
  The Nx types EMLX stores, and how they map to MLX's.

  MLX has no f8, c128 or sub-byte integer types, and no f64 on the GPU.
  MLX booleans read back as `{:u, 8}` in Nx.
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
  Raises `ArgumentError` unless `type` can be stored on `device`; `context`
  (the callback or op being run) goes into the message.
  """
  @spec check!(Nx.Type.t(), :cpu | :gpu, atom()) :: :ok
  def check!(type, device, context) do
    cond do
      type not in @supported ->
        raise ArgumentError,
              "EMLX.Backend: MLX has no #{Nx.Type.to_string(type)} type " <>
                "(in #{context}); supported types: " <>
                Enum.map_join(@supported, ", ", &Nx.Type.to_string/1)

      type == {:f, 64} and device == :gpu ->
        raise ArgumentError,
              "EMLX.Backend: f64 is only available on the :cpu device (in #{context})"

      true ->
        :ok
    end
  end

  @doc "The Nx type of an MLX array's type (`:bool` is `{:u, 8}`)."
  @spec to_nx(mlx_type) :: Nx.Type.t()
  def to_nx(:bool), do: {:u, 8}
  def to_nx(type), do: type

  @doc "Bytes per element."
  @spec elem_bytes(mlx_type) :: pos_integer()
  def elem_bytes(type), do: type |> to_nx() |> elem(1) |> div(8)
end
