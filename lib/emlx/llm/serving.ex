defmodule EMLX.LLM.Serving do
  @moduledoc """
  Greedy decoding with `EMLX.LLM.Qwen3` behind `Nx.Serving`: concurrent
  requests are batched and decoded together, one compiled prefill and one
  compiled step per token for the whole batch.

      model = EMLX.LLM.Qwen3.load("path/to/model", device: :cpu)
      serving = EMLX.LLM.Serving.new(model, max_tokens: 32)

      children = [{Nx.Serving, serving: serving, name: MyLLM, batch_size: 8, batch_timeout: 20}]
      Supervisor.start_link(children, strategy: :one_for_one)

      Nx.Serving.batched_run(MyLLM, [1, 2, 3])
      #=> [208, 246, 770, ...]   (max_tokens new ids)

  An input is one prompt (a non-empty list of token ids, at most
  `:sequence_length` of them) or a list of prompts (then a list of
  results). Prompts travel left-padded to `:sequence_length`; a batch is
  re-padded to its longest prompt and decoded with key masks and per-token
  positions (see `EMLX.LLM.Qwen3.generate/3`), so each prompt gets the
  tokens it gets alone.

  Options of `new/2`: `:max_tokens` (default 32), `:sequence_length`
  (default 128), `:max_length` (default `:sequence_length` plus
  `:max_tokens` less one: the KV cache's length for every left-padded
  batch; a batch whose prompts have one length grows its cache as
  mlx-lm's does, see `EMLX.LLM.Qwen3.generate/3`).
  """

  @behaviour Nx.Serving

  @doc "An `Nx.Serving` that decodes with `model` (see the module doc for the options)."
  @spec new(EMLX.LLM.Qwen3.t(), keyword()) :: Nx.Serving.t()
  def new(%EMLX.LLM.Qwen3{} = model, opts \\ []) do
    opts = Keyword.validate!(opts, [:max_length, max_tokens: 32, sequence_length: 128])
    seq = opts[:sequence_length]

    Nx.Serving.new(__MODULE__, {model, opts}, [])
    |> Nx.Serving.client_preprocessing(&preprocess(&1, seq))
    |> Nx.Serving.client_postprocessing(&postprocess/2)
  end

  @impl true
  def init(_type, {model, opts}, _defn_options), do: {:ok, {model, opts}}

  @impl true
  def handle_batch(batch, _partition, {model, opts} = state) do
    {ids, lengths} = Nx.Defn.jit_apply(&Function.identity/1, [batch], compiler: Nx.Defn.Evaluator)

    prompts =
      Enum.zip_with(Nx.to_list(ids), Nx.to_list(lengths), fn row, n -> Enum.take(row, -n) end)

    # One cache length for every batch, so each batch size compiles one step.
    max_length = opts[:max_length] || opts[:sequence_length] + opts[:max_tokens] - 1

    execute = fn ->
      generate_opts = [max_tokens: opts[:max_tokens], max_length: max_length]
      {tokens, stats} = EMLX.LLM.Qwen3.generate(model, prompts, generate_opts)
      {Nx.tensor(tokens, type: :s32, backend: Nx.BinaryBackend), stats}
    end

    {:execute, execute, state}
  end

  defp preprocess(input, seq) do
    {prompts, multi?} =
      case input do
        [first | _] when is_list(first) -> {input, true}
        _ -> {[input], false}
      end

    rows =
      Enum.map(prompts, fn prompt ->
        unless is_list(prompt) and prompt != [] and length(prompt) <= seq and
                 Enum.all?(prompt, &(is_integer(&1) and &1 >= 0)) do
          raise ArgumentError,
                "EMLX.LLM.Serving: a prompt is a list of 1 to #{seq} token ids, got: #{inspect(prompt)}"
        end

        n = length(prompt)

        ids =
          Nx.tensor(List.duplicate(0, seq - n) ++ prompt, type: :s32, backend: Nx.BinaryBackend)

        {ids, Nx.tensor(n, type: :s32, backend: Nx.BinaryBackend)}
      end)

    {Nx.Batch.stack(rows), multi?}
  end

  defp postprocess({tokens, _stats}, multi?) do
    rows = Nx.to_list(tokens)
    if multi?, do: rows, else: hd(rows)
  end
end
