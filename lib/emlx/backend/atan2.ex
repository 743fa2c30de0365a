defmodule EMLX.Backend.Atan2 do
  @moduledoc false
  # `Nx.atan2/2` for EMLX.Backend. MLX has no complex atan2; Nx defines it
  # for complex tensors whose imaginary parts are all zero (the atan2 of the
  # real parts, as a complex) and raises ArithmeticError otherwise, as
  # `Complex.atan2/2` does. Checking that reads the imaginary parts back.

  alias Nx.Tensor, as: T

  def atan2(%T{type: {:c, size}} = out, a, b) do
    for t <- [a, b], match?(%T{type: {:c, _}}, t), Nx.to_number(Nx.any(Nx.imag(t))) != 0 do
      raise ArithmeticError, "Complex.atan2 only accepts real numbers as arguments"
    end

    real = %{out | type: {:f, div(size, 2)}}
    angle = EMLX.Backend.run_quantization(real, :atan2, [Nx.real(a), Nx.real(b)], :out)
    %{out | data: Nx.as_type(angle, out.type).data}
  end

  def atan2(out, a, b), do: EMLX.Backend.run_quantization(out, :atan2, [a, b], :out)
end
