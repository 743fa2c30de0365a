# The cost of the types MLX lacks (EMLX.Backend.Emulated) and of the check
# that routes them, on the CPU:
#
#     MIX_ENV=test mix run bench/emulated_types.exs          # both parts
#     MIX_ENV=test mix run bench/emulated_types.exs add      # the dispatch check only
#
# "add": 10k eager f32 adds of two 4-element tensors (the dispatch-bound
# case every eager op pays), best of 5 rounds, per op.
# "c128": a 256x256 c128 multiply+add, a 128x128 dot and a 256x256
# transpose+slice+reverse, against c64 on EMLX and c128 on
# Nx.BinaryBackend, best of 3 rounds.

defmodule Bench.Emulated do
  def time(rounds, fun) do
    Enum.map(1..rounds, fn _ -> fun |> :timer.tc() |> elem(0) end) |> Enum.min()
  end

  def add do
    b = {EMLX.Backend, device: :cpu}
    x = Nx.tensor([1.0, 2.0, 3.0, 4.0], backend: b)
    y = Nx.tensor([0.5, 0.5, 0.5, 0.5], backend: b)
    loop = fn -> Enum.reduce(1..10_000, x, fn _, _ -> Nx.add(x, y) end) end
    loop.()
    us = time(5, loop)

    IO.puts(
      "10k eager f32 adds: #{Float.round(us / 1000, 1)} ms (#{Float.round(us / 10_000, 2)} us/op)"
    )
  end

  def c128 do
    for {backend, type} <- [
          {{EMLX.Backend, device: :cpu}, {:c, 64}},
          {{EMLX.Backend, device: :cpu}, {:c, 128}},
          {Nx.BinaryBackend, {:c, 128}}
        ] do
      key = Nx.Random.key(1)
      {re, key} = Nx.Random.uniform(key, shape: {256, 256}, type: :f64)
      {im, _} = Nx.Random.uniform(key, shape: {256, 256}, type: :f64)
      a = Nx.complex(re, im) |> Nx.as_type(type) |> Nx.backend_transfer(backend)
      b = Nx.multiply(a, 0.5)
      a128 = a[[0..127, 0..127]]
      b128 = b[[0..127, 0..127]]
      sync = fn t -> Nx.to_binary(t, limit: 1) end

      mul_add = time(3, fn -> a |> Nx.multiply(b) |> Nx.add(a) |> sync.() end)
      dot = time(3, fn -> Nx.dot(a128, b128) |> sync.() end)

      moves =
        time(3, fn ->
          a |> Nx.transpose() |> Nx.slice([1, 1], [128, 128]) |> Nx.reverse() |> sync.()
        end)

      IO.puts(
        "#{inspect(backend)} #{Nx.Type.to_string(type)}: 256x256 multiply+add " <>
          "#{Float.round(mul_add / 1000, 2)} ms, 128x128 dot #{Float.round(dot / 1000, 2)} ms, " <>
          "256x256 transpose+slice+reverse #{Float.round(moves / 1000, 2)} ms"
      )
    end
  end
end

case System.argv() do
  ["add"] -> Bench.Emulated.add()
  ["c128"] -> Bench.Emulated.c128()
  _ -> Bench.Emulated.add() && Bench.Emulated.c128()
end
