defmodule EMLX.Test.KernelSpec do
  @moduledoc false
  # Two instances may differ only in `kind`, a non-tensor (keep) field.
  @derive {Nx.Container, containers: [:x], keep: [:kind]}
  defstruct [:x, :kind]
end

defmodule EMLX.Test.Raising do
  @moduledoc false
  # A lazy container whose tensor raises when it is materialized.
  defstruct [:shape]

  defimpl Nx.LazyContainer do
    def traverse(%{shape: shape}, acc, fun) do
      fun.(Nx.template(shape, :f32), fn -> raise "materialized an unused input" end, acc)
    end
  end
end
