# Greedy decoding with a Qwen3-style model from an mlx-lm model folder
# (config.json + model*.safetensors, bf16 or affine-quantized), on EMLX:
#
#   mix run examples/llm_decode.exs --model DIR --prompt-ids 1,2,3 --max-tokens N [--device cpu|gpu]
#                                   [--warmup 1] [--runs 1] [--fuse]
#
# Prints the new token ids and the speed of the timed runs (after --warmup
# untimed runs, default 1; the best of --runs, default 1; --fuse runs the
# compiled plans under mx::compile, see EMLX.LLM.Qwen3.load/2), measured as
# scripts/mlx_lm_ref.py measures mlx-lm: prompt tokens over the time to the
# first new token, and the tokens after the first over the time after it.
#
#   TOKENS: 208 246 770 ...
#   PREFILL_TOK_S: 123.4
#   DECODE_TOK_S: 210.9
#
# The model code is EMLX.LLM.Qwen3 (lib/emlx/llm/qwen3.ex).

{opts, _, invalid} =
  OptionParser.parse(System.argv(),
    strict: [
      model: :string,
      prompt_ids: :string,
      max_tokens: :integer,
      device: :string,
      warmup: :integer,
      runs: :integer,
      fuse: :boolean
    ]
  )

usage =
  "usage: mix run examples/llm_decode.exs --model DIR --prompt-ids 1,2,3 --max-tokens N " <>
    "[--device cpu|gpu] [--warmup 1] [--runs 1] [--fuse]"

if invalid != [] or opts[:model] == nil or opts[:prompt_ids] == nil or opts[:max_tokens] == nil do
  IO.puts(:stderr, usage)
  System.halt(2)
end

device =
  case opts[:device] || "cpu" do
    "cpu" -> :cpu
    "gpu" -> :gpu
    other -> raise ArgumentError, "--device must be cpu or gpu, got: #{other}"
  end

prompt = opts[:prompt_ids] |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
model = EMLX.LLM.Qwen3.load(opts[:model], device: device, fuse: opts[:fuse] == true)
run = fn -> EMLX.LLM.Qwen3.generate(model, [prompt], max_tokens: opts[:max_tokens]) end

for _ <- 1..(opts[:warmup] || 1)//1, do: run.()
runs = for _ <- 1..max(opts[:runs] || 1, 1), do: run.()
{[tokens], _} = hd(runs)
prefill_s = runs |> Enum.map(&elem(&1, 1).prefill_s) |> Enum.min()
decode_s = runs |> Enum.map(&elem(&1, 1).decode_s) |> Enum.min()

decode_tok_s = if length(tokens) > 1 and decode_s > 0, do: (length(tokens) - 1) / decode_s

IO.puts("TOKENS: " <> Enum.join(tokens, " "))
IO.puts("PREFILL_TOK_S: #{Float.round(length(prompt) / prefill_s, 3)}")
IO.puts("DECODE_TOK_S: #{if decode_tok_s, do: Float.round(decode_tok_s, 3), else: "n/a"}")
