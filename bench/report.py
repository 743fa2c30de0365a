"""Merges the two halves of the benchmark suite into bench/results/latest.json,
prints the table, and draws bench/results/latest.png.

    bench/.venv/bin/python bench/report.py EMLX.json MLX.json [OUT_DIR]
        [--device cpu|gpu] [--name NAME] [--device-name TEXT]
        [--conformance FILE] [--more EMLX2.json MLX2.json]...

--device gpu (a GPU run: bench/run_gpu.sh) writes NAME.json (default
h200.json) as {"device": TEXT, "entries": [...], "conformance": {...}} and
NAME.png; the default, --device cpu, writes latest.json (the list of
entries below) and latest.png. --more adds the rows of another pair of
halves (the TF32 pass of bench/run_gpu.sh). --conformance FILE: a JSON
object {"doctests": [passed, total], "differential": [passed, total],
"fuzz_crashes": n} written by whoever ran the tests on the same host; each
key is null when the file (or the key) is absent. The chart needs
matplotlib; without it the chart is skipped, with a warning.

Each entry, one per workload:

    name, params        the workload
    emlx_s              EMLX.Backend, eager (Nx calls / defn via Nx.Defn.Evaluator)
    emlx_compiled_s     EMLX's defn compiler (null until it exists)
    mlx_python_s        Python MLX, eager
    mlx_compiled_s      Python MLX through mx.compile (null where not applicable)
    numpy_s             numpy on its own OpenBLAS (f32 matmul, softmax, SVD, QR, eigh)
    binary_s            Nx.BinaryBackend
    size                the size BinaryBackend ran (null when it did not run)
    cpu_idle            how idle the CPUs were when the workload started (with
                        BENCH_QUIET; null otherwise)
    iters, min_s, checksums, peak_bytes, errors   per side (min_s: the fastest
                        run; peak_bytes: MLX's peak memory over the timed runs)
    round_s             with BENCH_ROUNDS > 1 only: each side's median in each
                        round (the rounds run both sides back to back, one
                        round after the other); the times above are then the
                        medians of the rounds' medians

All times are median seconds per iteration after warm-up; null where a side
did not run. Ratios in the table: emlx/mlx = emlx_s / mlx_python_s (1.0 is
parity; above 1, EMLX is slower; with rounds, the median of the rounds'
ratios, as for jit/compiled), binary/emlx = binary_s / emlx_s (how many
times EMLX is faster than BinaryBackend).
"""

import argparse
import json
import os
import sys

# Time columns, in table and chart order: (JSON key, table header, chart label).
SIDES = [
    ("emlx_s", "EMLX", "EMLX (eager)"),
    ("emlx_compiled_s", "EMLX jit", "EMLX (compiled)"),
    ("mlx_python_s", "MLX py", "Python MLX (eager)"),
    ("mlx_compiled_s", "MLX compiled", "Python MLX (mx.compile)"),
    ("numpy_s", "numpy", "numpy (OpenBLAS)"),
    ("binary_s", "Binary", "Nx.BinaryBackend"),
]
COLORS = {
    "emlx_s": "#6b3fa0",
    "emlx_compiled_s": "#b08fd8",
    "mlx_python_s": "#2a7ab9",
    "mlx_compiled_s": "#8cc3ea",
    "numpy_s": "#e3a33b",
    "binary_s": "#999999",
}


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def combine_rounds(entries):
    """Python MLX's entries for one workload, one a round (BENCH_ROUNDS):
    each time the median of the rounds' medians, min_s the fastest run of
    all, iters summed, round_s each round's median, as emlx_bench.exs does
    for EMLX's side."""
    if len(entries) == 1:
        return entries[0]
    times = ("mlx_python_s", "mlx_compiled_s", "numpy_s")
    out = dict(entries[0])
    for key in times:
        vals = [e.get(key) for e in entries]
        out[key] = median(vals) if all(v is not None for v in vals) else None
    sides = {k for e in entries for k in e["min_s"]}
    out["min_s"] = {
        k: min((e["min_s"].get(k) for e in entries if e["min_s"].get(k) is not None), default=None) for k in sides
    }
    out["iters"] = {k: sum(e["iters"].get(k) or 0 for e in entries) or None for k in sides}
    out["peak_bytes"] = {
        k: max((e["peak_bytes"].get(k) for e in entries if e["peak_bytes"].get(k) is not None), default=None)
        for k in sides
    }
    out["round_s"] = {
        side: [e.get(key) for e in entries]
        for side, key in (("mlx_python", "mlx_python_s"), ("mlx_compiled", "mlx_compiled_s"), ("numpy", "numpy_s"))
    }
    return out


def paired_ratio(e, a, b):
    """a's time over b's (sides as named in round_s): with rounds, the
    median of each round's ratio (the two sides of a round ran back to
    back, so each pairing shares that moment's machine); else the ratio of
    the medians."""
    rounds = e.get("round_s") or {}
    xs, ys = rounds.get(a) or [], rounds.get(b) or []
    pairs = [x / y for x, y in zip(xs, ys) if x and y]
    if len(pairs) > 1 and len(pairs) == len(xs) == len(ys):
        return median(pairs)
    return ratio(e.get(a + "_s"), e.get(b + "_s"))


def merge(emlx_entries, mlx_entries):
    grouped = {}
    for m in mlx_entries:
        grouped.setdefault(m["name"], []).append(m)
    by_name = {name: combine_rounds(ms) for name, ms in grouped.items()}
    merged = []
    for e in emlx_entries:
        m = by_name.pop(e["name"], None)
        if m is None:
            print(f"report: {e['name']} has no Python MLX result", file=sys.stderr)
            m = {"iters": {}, "min_s": {}, "checksums": {}, "peak_bytes": {}, "errors": {}}
        merged.append(
            {
                "name": e["name"],
                "params": e["params"],
                "emlx_s": e["emlx_s"],
                "emlx_compiled_s": e.get("emlx_compiled_s"),
                "mlx_python_s": m.get("mlx_python_s"),
                "mlx_compiled_s": m.get("mlx_compiled_s"),
                "numpy_s": m.get("numpy_s"),
                "binary_s": e["binary_s"],
                "size": e["size"],
                "cpu_idle": e.get("cpu_idle"),
                "iters": {**e["iters"], **m["iters"]},
                "min_s": {**e["min_s"], **m["min_s"]},
                "checksums": {**e["checksums"], **m["checksums"]},
                "peak_bytes": {**e.get("peak_bytes", {}), **m.get("peak_bytes", {})},
                "errors": {**e["errors"], **m["errors"]},
            }
        )
        rounds = {**(e.get("round_s") or {}), **(m.get("round_s") or {})}
        if any(rounds.values()):
            merged[-1]["round_s"] = rounds
    for name in by_name:
        print(f"report: {name} ran on Python MLX only; left out", file=sys.stderr)
    return merged


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_time(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def checksum_note(entry):
    """A note when the sides' checksums (sum of |output|) disagree by more than
    1e-3 relative (1e-2 for bf16, whose rounding depends on accumulation order)."""
    values = {k: v for k, v in entry["checksums"].items() if v is not None}
    if len(values) < 2:
        return None
    tolerance = 1e-2 if "bf16" in entry["name"] else 1e-3
    ref = values.get("mlx_python", next(iter(values.values())))
    scale = max(abs(ref), 1e-6)
    off = [k for k, v in values.items() if abs(v - ref) / scale > tolerance]
    return f"checksum differs: {', '.join(off)}" if off else None


def fmt_mb(n):
    return "-" if n is None else f"{n / 1e6:.0f}"


def table(entries):
    sides = [
        s
        for s in SIDES
        if s[0] not in ("emlx_compiled_s", "numpy_s") or any(e.get(s[0]) for e in entries)
    ]
    binary = any(e["binary_s"] is not None for e in entries)
    if not binary:
        sides = [s for s in sides if s[0] != "binary_s"]
    numpy = any(e.get("numpy_s") for e in entries)
    header = (
        ["workload"]
        + [h for _, h, _ in sides]
        + ["emlx/mlx", "(min)", "jit/compiled"]
        + (["emlx/numpy"] if numpy else [])
        + ["peak MB emlx", "py"]
        + (["binary/emlx", "binary size"] if binary else [])
    )
    rows = []
    for e in entries:
        peak = e.get("peak_bytes", {})
        rows.append(
            [e["name"]]
            + [fmt_time(e.get(key)) for key, _, _ in sides]
            + [
                fmt_ratio(paired_ratio(e, "emlx", "mlx_python")),
                fmt_ratio(ratio(e["min_s"].get("emlx"), e["min_s"].get("mlx_python"))),
                fmt_ratio(paired_ratio(e, "emlx_compiled", "mlx_compiled")),
            ]
            + ([fmt_ratio(ratio(e["emlx_s"], e.get("numpy_s")))] if numpy else [])
            + [fmt_mb(peak.get("emlx")), fmt_mb(peak.get("mlx_python"))]
            + (
                [fmt_ratio(ratio(e["binary_s"], e["emlx_s"])), e["size"] or "-"]
                if binary
                else []
            )
        )
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            str(c).ljust(w) if i == 0 or header[i] == "binary size" else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )

    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    notes = []
    for e in entries:
        for side, message in e["errors"].items():
            notes.append(f"{e['name']}: {side}: {message.splitlines()[0][:160]}")
        if e.get("cpu_idle") is not None and e["cpu_idle"] < 0.9:
            notes.append(f"{e['name']}: started with the CPUs only {e['cpu_idle']:.0%} idle")
        note = checksum_note(e)
        if note:
            notes.append(f"{e['name']}: {note} ({e['checksums']})")
    return "\n".join(out + ([""] + notes if notes else []))


def chart(entries, path, device_label):
    try:
        import matplotlib
    except ImportError:
        print(f"report: no matplotlib here; {path} not drawn", file=sys.stderr)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [s for s in SIDES if any(e.get(s[0]) is not None for e in entries)]
    n = len(entries)
    height = 0.8 / len(sides)
    fig, (ax, rax) = plt.subplots(
        1,
        2,
        figsize=(13, 0.3 * n * len(sides) / 2 + 2),
        sharey=True,
        gridspec_kw={"width_ratios": [3, 1]},
    )
    for i, (key, _, label) in enumerate(sides):
        ys = [row + (i - (len(sides) - 1) / 2) * height for row in range(n)]
        xs = [e.get(key) or 0 for e in entries]
        ax.barh(ys, xs, height=height, label=label, color=COLORS[key])
        for y, e in zip(ys, entries):
            if e.get(key) is None and key in ("emlx_s", "mlx_python_s"):
                ax.text(
                    0.005,
                    y,
                    "n/a",
                    va="center",
                    fontsize=6,
                    color=COLORS[key],
                    transform=ax.get_yaxis_transform(),
                )
    ax.set_xscale("log")
    ax.set_yticks(range(n))
    ax.set_yticklabels([e["name"] for e in entries], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median seconds per iteration (log scale; shorter is faster)")
    title = "EMLX vs Python MLX"
    if any(e["binary_s"] is not None for e in entries):
        title += " vs Nx.BinaryBackend"
    ax.set_title(f"{title} ({device_label})")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)

    ratios = [paired_ratio(e, "emlx", "mlx_python") for e in entries]
    rax.barh(
        range(n),
        [r or 0 for r in ratios],
        height=0.6,
        color=[COLORS["emlx_s"] if r and r > 1 else COLORS["mlx_python_s"] for r in ratios],
    )
    for y, r in enumerate(ratios):
        label = f"{r:.2f}x" if r is not None else "n/a"
        rax.text(1.02, y, label, va="center", fontsize=7, transform=rax.get_yaxis_transform())
    rax.axvline(1.0, color="black", linewidth=0.8)
    rax.set_xscale("log")
    rax.set_xlabel("EMLX / Python MLX (1 = parity)")
    rax.set_title("ratio")
    rax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def conformance(path):
    """The test results of the GPU host, from FILE; null where absent."""
    keys = ("doctests", "differential", "fuzz_crashes")
    data = {}
    if path and os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    elif path:
        print(f"report: no conformance file {path}; conformance is null", file=sys.stderr)
    return {key: data.get(key) for key in keys}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Merges the benchmark halves.")
    parser.add_argument("emlx_json")
    parser.add_argument("mlx_json")
    results = os.path.join(os.path.dirname(__file__), "results")
    parser.add_argument("out_dir", nargs="?", default=results)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--name", help="file names, no extension (latest; gpu: h200)")
    parser.add_argument("--device-name", help="the device, in words (the GPU's name)")
    parser.add_argument("--conformance", metavar="FILE", help="test results JSON of the same host")
    parser.add_argument("--more", nargs=2, action="append", default=[], metavar=("EMLX", "MLX"))
    return parser.parse_args(argv[1:])


def load(path):
    with open(path) as f:
        return json.load(f)


def main(argv):
    args = parse_args(argv)
    gpu = args.device == "gpu"
    name = args.name or ("h200" if gpu else "latest")
    device_label = args.device_name or ("GPU" if gpu else "CPU")

    entries = merge(load(args.emlx_json), load(args.mlx_json))
    for emlx_path, mlx_path in args.more:
        entries += merge(load(emlx_path), load(mlx_path))

    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, f"{name}.json")
    png_path = os.path.join(args.out_dir, f"{name}.png")
    if gpu:
        document = {
            "device": device_label,
            "entries": entries,
            "conformance": conformance(args.conformance),
        }
    else:
        document = entries
    with open(json_path, "w") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
    drawn = chart(entries, png_path, device_label)

    if gpu:
        print(f"device: {device_label}")
    print(table(entries))
    print()
    print("emlx/mlx: EMLX time / Python MLX time (eager both; > 1: EMLX slower);")
    print("(min): the same ratio of the fastest runs, less sensitive to background load.")
    print("jit/compiled: EMLX compiled (compiler: EMLX) time / Python mx.compile time.")
    if any(e.get("numpy_s") for e in entries):
        print("emlx/numpy: EMLX eager time / numpy time (numpy on its own OpenBLAS).")
    print("peak MB: MLX's peak memory over the timed runs, EMLX eager and Python MLX eager")
    print("(inputs and one kept output included on both sides).")
    if any(e["binary_s"] is not None for e in entries):
        print("binary/emlx: BinaryBackend time / EMLX time, at the size in 'binary size'.")
    if gpu:
        print(f"conformance: {json.dumps(document['conformance'])}")
    print(f"wrote {json_path}" + (f" and {png_path}" if drawn else ""))


if __name__ == "__main__":
    main(sys.argv)
