defmodule EMLX.LLMTest do
  @moduledoc """
  EMLX.LLM.Qwen3 against mlx-lm 0.32.0 on small random Qwen3-shaped models
  that mlx-lm itself makes and saves (scripts/mlx_lm_ref.py): greedy
  decoding gives mlx-lm's token ids exactly, in bf16 and 4-bit, tied and
  untied; the decode steps reuse one compiled plan; batches and
  EMLX.LLM.Serving give each prompt's tokens as decoding it alone does.
  Needs the Python venv of scripts/setup.sh (EMLX.PyEnv); nothing is
  downloaded.
  """
  use EMLX.Case, async: false

  alias EMLX.LLM.Qwen3
  alias EMLX.PyEnv

  @new_tokens 32
  @prompts [[1, 2, 3, 4, 5], [17], [900, 12, 512, 3, 3, 3, 77, 1000, 4, 61, 2]]

  setup_all do
    dir = Path.join(System.tmp_dir!(), "emlx-llm-test-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)

    models =
      for {name, args} <- [
            bf16: [],
            q4: ["--bits", "4", "--group-size", "64"],
            q4_untied: ["--bits", "4", "--group-size", "64", "--untied", "--seed", "3"]
          ],
          into: %{} do
        out = Path.join(dir, Atom.to_string(name))
        PyEnv.mlx_lm_ref!(["make", "--out", out | args])

        expected =
          for prompt <- @prompts do
            ids = Enum.join(prompt, ",")

            PyEnv.mlx_lm_ref!([
              "generate",
              "--model",
              out,
              "--prompt-ids",
              ids,
              "--max-tokens",
              "#{@new_tokens}"
            ])
            |> Map.fetch!("tokens")
          end

        {name, %{dir: out, expected: expected, model: Qwen3.load(out, device: device())}}
      end

    %{models: models}
  end

  for name <- [:bf16, :q4, :q4_untied] do
    test "greedy tokens equal mlx-lm's, #{name}", %{models: models} do
      %{model: model, expected: expected} = models[unquote(name)]

      for {prompt, want} <- Enum.zip(@prompts, expected) do
        {[got], _stats} = Qwen3.generate(model, [prompt], max_tokens: @new_tokens)

        assert got == want,
               "prompt #{inspect(prompt)}: EMLX #{inspect(got)}, mlx-lm #{inspect(want)}"
      end
    end
  end

  test "past 256 positions the KV cache grows as mlx-lm's, and the tokens stay equal",
       %{models: models} do
    %{dir: dir, model: model} = models.q4
    prompt = [5, 17, 42, 7]

    want =
      PyEnv.mlx_lm_ref!([
        "generate",
        "--model",
        dir,
        "--prompt-ids",
        "5,17,42,7",
        "--max-tokens",
        "300"
      ])
      |> Map.fetch!("tokens")

    {[got], _} = Qwen3.generate(model, [prompt], max_tokens: 300)
    assert length(got) == 300
    assert got == want
  end

  test "the model folder is read as mlx-lm wrote it", %{models: models} do
    %{model: q4} = models.q4
    assert q4.config.layers == 4 and q4.config.tie
    assert Map.keys(q4.params.embed) |> Enum.sort() == [:biases, :scales, :weight]
    assert q4.params.embed.weight.type == {:u, 32}
    refute Map.has_key?(q4.params, :lm_head)
    assert Map.has_key?(models.q4_untied.model.params, :lm_head)
    assert %{weight: %Nx.Tensor{type: {:bf, 16}}} = models.bf16.model.params.embed
  end

  test "bad input raises ArgumentError", %{models: models} do
    model = models.bf16.model

    assert_raise ArgumentError, ~r/max_length 5 is shorter/, fn ->
      Qwen3.generate(model, [[1, 2, 3]], max_tokens: 4, max_length: 5)
    end

    assert_raise ArgumentError, ~r/non-empty/, fn -> Qwen3.generate(model, [[1], []]) end

    dir = Path.join(System.tmp_dir!(), "emlx-llm-bad-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    File.write!(Path.join(dir, "config.json"), ~s({"model_type": "llama"}))
    assert_raise ArgumentError, ~r/model_type "qwen3", got "llama"/, fn -> Qwen3.load(dir) end
    config = models.bf16.dir |> Path.join("config.json") |> File.read!() |> JSON.decode!()
    yarn = Map.put(config, "rope_scaling", %{"rope_type" => "yarn", "factor" => 4.0})
    File.write!(Path.join(dir, "config.json"), JSON.encode!(yarn))

    assert_raise ArgumentError, ~r/rope scaling .*yarn.* is not supported/, fn ->
      Qwen3.load(dir)
    end

    File.write!(Path.join(dir, "config.json"), JSON.encode!(config))
    assert_raise ArgumentError, ~r/no model\*.safetensors/, fn -> Qwen3.load(dir) end

    serving = EMLX.LLM.Serving.new(model, sequence_length: 4)

    assert_raise ArgumentError, ~r/1 to 4 token ids/, fn ->
      Nx.Serving.run(serving, [1, 2, 3, 4, 5])
    end
  end

  test "decode steps and prefill reuse their compiled plans", %{models: models} do
    # (a model of its own: its plans are recorded here, whatever ran before)
    model = Qwen3.load(models.q4.dir, device: device())
    # Every recording ends in EMLX.Defn.Recorder.finish/3: count its calls.
    Code.ensure_loaded!(EMLX.Defn.Recorder)
    assert :erlang.trace_pattern({EMLX.Defn.Recorder, :finish, 3}, true, [:global]) == 1
    tracer = spawn_link(fn -> count_calls(0) end)
    :erlang.trace(self(), true, [:call, {:tracer, tracer}])

    # Two steps first (recording the prefill and the step), then 32 with
    # the same cache length: nothing is recorded again.
    Qwen3.generate(model, [hd(@prompts)], max_tokens: 2, max_length: 40)
    recorded = recordings(tracer)
    assert recorded > 0
    before = EMLX.Defn.Cache.size()

    {[tokens], _} = Qwen3.generate(model, [hd(@prompts)], max_tokens: @new_tokens, max_length: 40)

    assert recordings(tracer) == recorded
    :erlang.trace(self(), false, [:call])

    assert EMLX.Defn.Cache.size() == before
    assert tokens == hd(models.q4.expected)
  end

  defp count_calls(n) do
    receive do
      {:trace, _, :call, _} -> count_calls(n + 1)
      {:count, from} -> send(from, {:count, n}) && count_calls(n)
    end
  end

  defp recordings(tracer) do
    ref = :erlang.trace_delivered(self())
    assert_receive {:trace_delivered, _, ^ref}, 5_000
    send(tracer, {:count, self()})
    assert_receive {:count, n}, 5_000
    n
  end

  @tag :batch_bit_equal
  test "a batch of prompts of different lengths (left-padded) decodes each as alone", %{
    models: models
  } do
    for name <- [:bf16, :q4] do
      %{model: model, expected: expected} = models[name]
      {got, _} = Qwen3.generate(model, @prompts, max_tokens: @new_tokens)
      assert got == expected, "#{name}: #{inspect(got)} != #{inspect(expected)}"
    end
  end

  @tag :batch_bit_equal
  test "EMLX.LLM.Serving: 8 concurrent callers get the tokens of one at a time", %{models: models} do
    %{model: model} = models.bf16
    serving = EMLX.LLM.Serving.new(model, max_tokens: 16, sequence_length: 16)
    name = :"emlx_llm_serving_#{System.unique_integer([:positive])}"

    start_supervised!(
      {Nx.Serving, serving: serving, name: name, batch_size: 8, batch_timeout: 200}
    )

    prompts = for i <- 1..8, do: Enum.map(1..(2 + rem(i, 5)), &rem(&1 * 37 + i * 101, 1024))
    alone = Enum.map(prompts, &Nx.Serving.run(serving, &1))
    assert Enum.all?(alone, &(length(&1) == 16))

    batched =
      prompts
      |> Enum.map(fn prompt -> Task.async(fn -> Nx.Serving.batched_run(name, prompt) end) end)
      |> Task.await_many(60_000)

    assert batched == alone
    assert Nx.Serving.run(serving, Enum.take(prompts, 2)) == Enum.take(alone, 2)
  end
end
