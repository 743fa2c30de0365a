"""LLM decode speed, EMLX against mlx-lm on the same weights (bench/llm_decode.sh runs it).

For each variant (bf16, 4-bit affine with groups of 64) of a Qwen3-0.6B-shaped
model with random weights (scripts/mlx_lm_ref.py make --preset qwen3-0.6b,
made once into the cache folder), runs mlx-lm's greedy decode
(scripts/mlx_lm_ref.py generate) and EMLX's (examples/llm_decode.exs), each
warm (one untimed run first, then the best of --runs timed runs), and writes
one JSON file:

    {"device": ..., "prompt_tokens": P, "new_tokens": N, "entries": [
       {"variant": "bf16", "mlx_lm": {"prefill_tok_s", "decode_tok_s", "tokens"},
        "emlx": {...}, "decode_ratio": emlx / mlx_lm, "prefill_ratio": ...,
        "tokens_equal": bool}, ...]}

Both sides time the same things: prompt tokens over the time to the first
new token (mlx-lm's prefill of all but the last prompt token, then the first
step), and the tokens after the first over the time after it.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, env=None):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{cmd[0]} exited with {proc.returncode}")
    return proc.stdout


def ensure_model(python, cache, variant):
    out = cache / f"qwen3-0.6b-{variant}"
    if not (out / "config.json").exists():
        args = ["make", "--preset", "qwen3-0.6b", "--out", str(out)]
        if variant == "4bit":
            args += ["--bits", "4", "--group-size", "64"]
        run([python, str(ROOT / "scripts/mlx_lm_ref.py")] + args)
    return out


def mlx_lm(python, model, prompt, new_tokens, runs):
    out = run(
        [python, str(ROOT / "scripts/mlx_lm_ref.py"), "generate", "--model", str(model),
         "--prompt-ids", prompt, "--max-tokens", str(new_tokens), "--warmup", "1", "--runs", str(runs)]
    )
    return json.loads(out.strip().splitlines()[-1])


def emlx(model, prompt, new_tokens, device, runs, fuse=False):
    out = run(
        ["mix", "run", "examples/llm_decode.exs", "--model", str(model), "--prompt-ids", prompt,
         "--max-tokens", str(new_tokens), "--device", device, "--warmup", "1", "--runs", str(runs)]
        + (["--fuse"] if fuse else []),
        env=dict(os.environ, MIX_ENV=os.environ.get("MIX_ENV", "dev")),
    )
    fields = dict(re.findall(r"^([A-Z_]+): (.*)$", out, re.M))
    return {
        "tokens": [int(t) for t in fields["TOKENS"].split()],
        "prefill_tok_s": float(fields["PREFILL_TOK_S"]),
        "decode_tok_s": float(fields["DECODE_TOK_S"]),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--cache", default=str(Path.home() / ".cache/emlx/llm-bench"))
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--variants", default="bf16,4bit")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    # off: EMLX's plans replay MLX's ops one by one (the default); on: under
    # mx::compile (--fuse); both: each round runs EMLX both ways, the fused
    # run reported apart (emlx_fused)
    p.add_argument("--fuse", default="off", choices=["off", "on", "both"])
    p.add_argument("--out", required=True)
    args = p.parse_args()

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    # Any fixed ids below the vocabulary.
    prompt = ",".join(str(100 + 37 * i) for i in range(args.prompt_tokens))
    entries = []
    for variant in args.variants.split(","):
        model = ensure_model(args.python, cache, variant)
        # Rounds alternate the two sides (a fresh process each), so that a
        # host whose speed drifts between runs shows it on both; the round
        # with the median decode ratio is the one reported.
        rounds = []
        for _ in range(args.rounds):
            ref = mlx_lm(args.python, model, prompt, args.new_tokens, args.runs)
            got = emlx(model, prompt, args.new_tokens, args.device, args.runs, args.fuse == "on")
            fused = None
            if args.fuse == "both":
                fused = emlx(model, prompt, args.new_tokens, args.device, args.runs, True)
            rounds.append((got["decode_tok_s"] / ref["decode_tok_s"], ref, got, fused))
        ratios = [r[0] for r in rounds]
        _, ref, got, _ = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
        entry = {
            "variant": variant,
            "model": str(model),
            "mlx_lm": ref,
            "emlx": got,
            "prefill_ratio": got["prefill_tok_s"] / ref["prefill_tok_s"],
            "decode_ratio": got["decode_tok_s"] / ref["decode_tok_s"],
            "decode_ratios_by_round": ratios,
            # each side's rate by round, and the ratio of each side's best
            # round (less sensitive to a host whose speed drifts)
            "decode_tok_s_by_round": {
                "mlx_lm": [r[1]["decode_tok_s"] for r in rounds],
                "emlx": [r[2]["decode_tok_s"] for r in rounds],
            },
            "decode_ratio_best": max(r[2]["decode_tok_s"] for r in rounds)
            / max(r[1]["decode_tok_s"] for r in rounds),
            "tokens_equal": all(r[2]["tokens"] == r[1]["tokens"] for r in rounds),
            "emlx_fuse": args.fuse == "on",
        }
        if args.fuse == "both":
            fused_ratios = [r[3]["decode_tok_s"] / r[1]["decode_tok_s"] for r in rounds]
            entry["emlx_fused"] = {
                "decode_tok_s_by_round": [r[3]["decode_tok_s"] for r in rounds],
                "decode_ratios_by_round": fused_ratios,
                "decode_ratio_median": sorted(fused_ratios)[len(fused_ratios) // 2],
                "tokens_equal": all(r[3]["tokens"] == r[1]["tokens"] for r in rounds),
            }
        print(
            f"{variant}: decode EMLX {got['decode_tok_s']:.2f} tok/s, mlx-lm {ref['decode_tok_s']:.2f} tok/s "
            f"({entry['decode_ratio']:.3f}x); prefill EMLX {got['prefill_tok_s']:.2f}, "
            f"mlx-lm {ref['prefill_tok_s']:.2f} ({entry['prefill_ratio']:.3f}x); "
            f"tokens equal: {entry['tokens_equal']}; decode ratio by round: "
            f"{', '.join(f'{r:.3f}' for r in ratios)}; best round each side: "
            f"{entry['decode_ratio_best']:.3f}",
            flush=True,
        )
        if "emlx_fused" in entry:
            f = entry["emlx_fused"]
            print(
                f"{variant}: fused EMLX decode ratio by round: "
                f"{', '.join(f'{r:.3f}' for r in f['decode_ratios_by_round'])}; tokens equal: {f['tokens_equal']}",
                flush=True,
            )
        entries.append(entry)

    result = {
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "model": "Qwen3-0.6B shape (hidden 1024, 28 layers, 16/8 heads, head_dim 128, "
        "intermediate 3072, vocab 151936, tied), random weights",
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "runs": f"one warm-up, then the best of {args.runs} timed runs, each side; {args.rounds} "
        "round(s), each running mlx-lm then EMLX; the round of the median decode ratio is reported",
        "entries": entries,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
