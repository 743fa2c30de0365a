defmodule EMLX.Ops do
  @moduledoc """
  The op table, as Elixir sees it: every op EMLX runs on MLX, its argument
  signature and its number of results.

  The table is the C side's op table file, read here at compile time (and
  recompiled when it changes), so the names, signatures and output counts
  the NIF knows are the ones Elixir uses. Only entry lines are read: lines
  that start, at column 0, with `UNARY(`, `UNARY_KEEP(`, `BINARY(`,
  `BINARY_KEEP(`, `REDUCE(`, `OP(` or `OPN(`.

  Signature letters are those of `EMLX.NIF.op_list/0`: `a` array, `A` list
  of arrays, `i` integer, `I` list of integers, `t` type, `b` boolean, `n`
  number, `f` float, `s` string.
  """

  # The op table file: the one place it is named.
  @op_table Path.expand("../../c_src/shim/emlx_ops.def", __DIR__)
  @external_resource @op_table

  @fixed_signatures %{
    "UNARY" => "a",
    "UNARY_KEEP" => "a",
    "BINARY" => "aa",
    "BINARY_KEEP" => "aa",
    "REDUCE" => "aIb"
  }

  entry = ~r/^(UNARY_KEEP|UNARY|BINARY_KEEP|BINARY|REDUCE|OPN|OP)\(/
  fixed = ~r/^(\w+)\(\s*(\w+)\s*,/
  op = ~r/^OP\(\s*(\w+)\s*,\s*"([^"]*)"\s*,/
  opn = ~r/^OPN\(\s*(\w+)\s*,\s*"([^"]*)"\s*,\s*(\d+)\s*,/

  parse = fn line ->
    case Regex.run(entry, line, capture: :all_but_first) do
      nil ->
        []

      ["OP"] ->
        [_, name, sig] = Regex.run(op, line) || raise "bad OP entry in #{@op_table}: #{line}"
        [{String.to_atom(name), :op, sig, 1}]

      ["OPN"] ->
        [_, name, sig, n] = Regex.run(opn, line) || raise "bad OPN entry in #{@op_table}: #{line}"
        [{String.to_atom(name), :opn, sig, String.to_integer(n)}]

      [kind] ->
        [_, ^kind, name] = Regex.run(fixed, line) || raise "bad entry in #{@op_table}: #{line}"
        kind_atom = kind |> String.downcase() |> String.to_atom()
        [{String.to_atom(name), kind_atom, Map.fetch!(@fixed_signatures, kind), 1}]
    end
  end

  @ops @op_table |> File.read!() |> String.split("\n") |> Enum.flat_map(parse)

  @typedoc "An op: name, kind (the table's entry kind), signature and number of results."
  @type op :: {atom(), atom(), String.t(), pos_integer()}

  @doc "Every op of the table, in table order."
  @spec all() :: [op]
  def all, do: @ops

  @doc "The element-wise ops of one argument (`UNARY` and `UNARY_KEEP` entries)."
  @spec unary() :: [atom()]
  def unary, do: unquote(for {name, kind, _, _} <- @ops, kind in [:unary, :unary_keep], do: name)

  @doc "The element-wise ops of two arguments (`BINARY` and `BINARY_KEEP` entries)."
  @spec binary() :: [atom()]
  def binary,
    do: unquote(for {name, kind, _, _} <- @ops, kind in [:binary, :binary_keep], do: name)

  @doc "The ops whose argument signature is `signature`."
  @spec with_signature(String.t()) :: [atom()]
  def with_signature(signature), do: for({name, _, ^signature, _} <- @ops, do: name)

  @doc "The number of arrays op `name` returns (1 for ops outside the table)."
  @spec outputs(atom()) :: pos_integer()
  for {name, _kind, _sig, n} <- @ops, n != 1 do
    def outputs(unquote(name)), do: unquote(n)
  end

  def outputs(_name), do: 1
end
