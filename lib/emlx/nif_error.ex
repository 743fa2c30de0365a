defmodule EMLX.NIFError do
  @moduledoc """
  Raised when MLX itself fails: the C++ exception is caught in the shim and
  its message is carried here. Bad arguments raise `ArgumentError` instead,
  before MLX is called.
  """
  defexception [:message]
end
