"""The mlx-lm side of EMLX's LLM tests and benchmarks.

    python scripts/mlx_lm_ref.py make --out DIR [--preset tiny|qwen3-0.6b] [--bits 4] [--seed 0]
    python scripts/mlx_lm_ref.py generate --model DIR --prompt-ids 1,2,3 [--prompt-ids 4,5 ...] --max-tokens N
                                          [--warmup 1] [--runs 1]

`make` builds a Qwen3-shaped model with random weights (mlx_lm.models.qwen3,
fixed seed), casts it to bf16, optionally quantizes it with mlx-lm's own
quantize_model (affine, group size 64), and writes config.json and the
safetensors with mlx-lm's save_model/save_config: the folder is what
`mlx_lm.convert` would write, minus the tokenizer.

`generate` greedy-decodes with mlx-lm's generate_step (the prompt but its
last token as one prefill call, then one step per token, as mlx_lm.generate
does) and prints one JSON line: tokens, prefill_tok_s (prompt tokens over
the time to the first token) and decode_tok_s (the tokens after the first
over the time after it), after --warmup untimed runs, the best of --runs;
with several prompts,
"runs" holds those fields for each.

Needs mlx (with mlx-cpu, or a CUDA build) and mlx-lm==0.32.0 importable;
scripts/setup.sh makes such a venv at /opt/emlx/pyenv.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_lm.generate import generate_step
from mlx_lm.models import qwen3
from mlx_lm.utils import load_model, quantize_model, save_config, save_model

PRESETS = {
    # A small model for the token-equality tests.
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=1024,
        tie_word_embeddings=True,
    ),
    # Qwen3-0.6B's shape (random weights).
    "qwen3-0.6b": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        intermediate_size=3072,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}


def make(args):
    config = dict(
        model_type="qwen3",
        rms_norm_eps=1e-6,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        **PRESETS[args.preset],
    )
    if args.untied:
        config["tie_word_embeddings"] = False
    mx.random.seed(args.seed)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    # Random weights that make a lively model (mlx's default initialisation
    # gives one that repeats a single token): projections normal with std
    # 2 / sqrt(fan_in), embeddings standard normal, norm weights 1 + 0.2 * normal
    # (so that q_norm/k_norm and the layer norms matter).
    params = []
    for name, p in tree_flatten(model.parameters()):
        if "norm" in name:
            p = 1.0 + 0.2 * mx.random.normal(p.shape)
        elif "embed" in name:
            p = mx.random.normal(p.shape)
        else:
            p = 2.0 * mx.random.normal(p.shape) / p.shape[-1] ** 0.5
        params.append((name, p))
    model.update(tree_unflatten(params))
    model.update(tree_map(lambda p: p.astype(mx.bfloat16), model.parameters()))
    mx.eval(model.parameters())
    if args.bits:
        model, config = quantize_model(model, config, group_size=args.group_size, bits=args.bits)
    out = Path(args.out)
    save_model(out, model)
    save_config(config, out / "config.json")
    print(json.dumps({"out": str(out), "parameters": sum(v.size for _, v in tree_flatten(model.parameters()))}))


def decode(model, prompt, max_tokens):
    t0 = time.perf_counter()
    tokens, t1 = [], None
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=max_tokens):
        tokens.append(int(token))
        if t1 is None:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    return tokens, t1 - t0, t2 - t1


def generate(args):
    model, _ = load_model(Path(args.model))
    runs = []
    for ids in args.prompt_ids:
        prompt = [int(t) for t in ids.split(",")]
        for _ in range(args.warmup):
            decode(model, prompt, args.max_tokens)
        timed = [decode(model, prompt, args.max_tokens) for _ in range(max(args.runs, 1))]
        tokens = timed[0][0]
        first, rest = min(t[1] for t in timed), min(t[2] for t in timed)
        runs.append(
            {
                "tokens": tokens,
                "prefill_tok_s": len(prompt) / first,
                "decode_tok_s": (len(tokens) - 1) / rest if len(tokens) > 1 and rest > 0 else None,
            }
        )
    # One prompt: its run's fields; several: "runs", one per prompt.
    result = runs[0] if len(runs) == 1 else {"runs": runs}
    result.update(mlx=mx.__version__, device=str(mx.default_device()))
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    m.add_argument("--bits", type=int, default=0)
    m.add_argument("--group-size", type=int, default=64)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--untied", action="store_true")
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--prompt-ids", required=True, action="append", help="comma-separated ids; repeat for more prompts")
    g.add_argument("--max-tokens", type=int, default=32)
    g.add_argument("--warmup", type=int, default=0)
    g.add_argument("--runs", type=int, default=1, help="timed runs; the best times are reported")
    args = parser.parse_args()
    {"make": make, "generate": generate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
