# The main job: the dominant eigenvalue of a 256x256 symmetric matrix by
# power iteration (100 matrix-vector products, normalisations, reductions),
# computed on EMLX and on Nx.BinaryBackend, with results and times side by side.
#
#     mix run examples/power_iteration.exs

defmodule PowerIteration do
  def run(backend, n \\ 256, steps \\ 100) do
    Nx.with_default_backend(backend, fn ->
      key = Nx.Random.key(42)
      {a, _} = Nx.Random.normal(key, shape: {n, n}, type: :f32)
      # symmetric with a known dominant direction
      m = Nx.add(Nx.dot(a, Nx.transpose(a)) |> Nx.divide(n), Nx.multiply(Nx.eye(n), 3.0))
      v0 = Nx.broadcast(Nx.tensor(1.0), {n}) |> Nx.divide(:math.sqrt(n))

      v =
        Enum.reduce(1..steps, v0, fn _, v ->
          w = Nx.dot(m, v)
          Nx.divide(w, Nx.sqrt(Nx.sum(Nx.multiply(w, w))))
        end)

      Nx.dot(v, Nx.dot(m, v)) |> Nx.to_number()
    end)
  end
end

time = fn fun ->
  {us, value} = :timer.tc(fun)
  {value, us / 1_000_000}
end

{emlx_value, emlx_s} = time.(fn -> PowerIteration.run({EMLX.Backend, device: :cpu}) end)
{bin_value, bin_s} = time.(fn -> PowerIteration.run(Nx.BinaryBackend) end)

IO.puts(
  "dominant eigenvalue (EMLX.Backend):     #{Float.round(emlx_value, 4)}  in #{Float.round(emlx_s, 3)} s"
)

IO.puts(
  "dominant eigenvalue (Nx.BinaryBackend): #{Float.round(bin_value, 4)}  in #{Float.round(bin_s, 3)} s"
)

IO.puts(
  "EMLX is #{Float.round(bin_s / emlx_s, 1)}x faster; |difference| = #{abs(emlx_value - bin_value)}"
)
