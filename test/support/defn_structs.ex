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

defmodule EMLX.Test.LazyParts do
  @moduledoc false
  # A lazy container of three lists: `a` and `c` become tensors when
  # materialized, `b` raises (Axon's test of lazy container inputs).
  defstruct [:a, :b, :c]

  defimpl Nx.LazyContainer do
    def traverse(%{a: a, b: b, c: c}, acc, fun) do
      {a, acc} = fun.(a |> Nx.tensor() |> Nx.to_template(), fn -> Nx.tensor(a) end, acc)
      {b, acc} = fun.(b |> Nx.tensor() |> Nx.to_template(), fn -> raise "don't call b" end, acc)
      {c, acc} = fun.(c |> Nx.tensor() |> Nx.to_template(), fn -> Nx.tensor(c) end, acc)
      {%{a: a, b: b, c: c}, acc}
    end
  end
end
