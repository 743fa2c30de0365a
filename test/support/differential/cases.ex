defmodule EMLX.Differential.Cases do
  @moduledoc false
  # The cases of test/emlx/differential_test.exs, built from tables by
  # family (see EMLX.Differential for the case format):
  #
  #   * EMLX.Differential.Cases.Elementwise - element-wise ops, select,
  #     clip and type casts;
  #   * EMLX.Differential.Cases.Structural - shape ops, reductions,
  #     sorting, dot, indexing and creation;
  #   * EMLX.Differential.Cases.Numeric - windows, convolution, reductions
  #     with a function, FFT, linear algebra, Nx.Block functions and larger
  #     inputs.
  #
  # Each family module `use`s this one for the case-building helpers.

  alias __MODULE__.{Elementwise, Numeric, Structural}

  @doc "Every case, in table order (raises if two share an id)."
  def all do
    EMLX.Differential.check_unique!(Elementwise.cases() ++ Structural.cases() ++ Numeric.cases())
  end

  defmacro __using__(_opts) do
    quote do
      alias EMLX.Differential, as: D
      import EMLX.Differential, only: [t: 2, t: 3]
    end
  end
end
