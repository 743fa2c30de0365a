"""Merges the two halves of the benchmark suite into bench/results/latest.json,
prints the table, and draws bench/results/latest.png.

    bench/.venv/bin/python bench/report.py EMLX.json MLX.json [OUT_DIR]

latest.json is a list with one entry per workload:

    name, params        the workload
    emlx_s              EMLX.Backend, eager (Nx calls / defn via Nx.Defn.Evaluator)
    emlx_compiled_s     EMLX's defn compiler (null until it exists)
    mlx_python_s        Python MLX, eager
    mlx_compiled_s      Python MLX through mx.compile (null where not applicable)
    binary_s            Nx.BinaryBackend
    size                the size BinaryBackend ran (null when it did not run)
    iters, min_s, checksums, errors   per side (min_s: the fastest run)

All times are median seconds per iteration after warm-up; null where a side
did not run. Ratios in the table: emlx/mlx = emlx_s / mlx_python_s (1.0 is
parity; above 1, EMLX is slower), binary/emlx = binary_s / emlx_s (how many
times EMLX is faster than BinaryBackend).
"""

import json
import os
import sys

# Time columns, in table and chart order: (JSON key, table header, chart label).
SIDES = [
    ("emlx_s", "EMLX", "EMLX (eager)"),
    ("emlx_compiled_s", "EMLX jit", "EMLX (compiled)"),
    ("mlx_python_s", "MLX py", "Python MLX (eager)"),
    ("mlx_compiled_s", "MLX compiled", "Python MLX (mx.compile)"),
    ("binary_s", "Binary", "Nx.BinaryBackend"),
]
COLORS = {
    "emlx_s": "#6b3fa0",
    "emlx_compiled_s": "#b08fd8",
    "mlx_python_s": "#2a7ab9",
    "mlx_compiled_s": "#8cc3ea",
    "binary_s": "#999999",
}


def merge(emlx_entries, mlx_entries):
    by_name = {e["name"]: e for e in mlx_entries}
    merged = []
    for e in emlx_entries:
        m = by_name.pop(e["name"], None)
        if m is None:
            print(f"report: {e['name']} has no Python MLX result", file=sys.stderr)
            m = {"iters": {}, "min_s": {}, "checksums": {}, "errors": {}}
        merged.append(
            {
                "name": e["name"],
                "params": e["params"],
                "emlx_s": e["emlx_s"],
                "emlx_compiled_s": e.get("emlx_compiled_s"),
                "mlx_python_s": m.get("mlx_python_s"),
                "mlx_compiled_s": m.get("mlx_compiled_s"),
                "binary_s": e["binary_s"],
                "size": e["size"],
                "iters": {**e["iters"], **m["iters"]},
                "min_s": {**e["min_s"], **m["min_s"]},
                "checksums": {**e["checksums"], **m["checksums"]},
                "errors": {**e["errors"], **m["errors"]},
            }
        )
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


def table(entries):
    sides = [s for s in SIDES if s[0] != "emlx_compiled_s" or any(e[s[0]] for e in entries)]
    header = (
        ["workload"]
        + [h for _, h, _ in sides]
        + ["emlx/mlx", "(min)", "binary/emlx", "binary size"]
    )
    rows = []
    for e in entries:
        rows.append(
            [e["name"]]
            + [fmt_time(e[key]) for key, _, _ in sides]
            + [
                fmt_ratio(ratio(e["emlx_s"], e["mlx_python_s"])),
                fmt_ratio(ratio(e["min_s"].get("emlx"), e["min_s"].get("mlx_python"))),
                fmt_ratio(ratio(e["binary_s"], e["emlx_s"])),
                e["size"] or "-",
            ]
        )
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            str(c).ljust(w) if i == 0 or i == len(cells) - 1 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )

    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    notes = []
    for e in entries:
        for side, message in e["errors"].items():
            notes.append(f"{e['name']}: {side}: {message.splitlines()[0][:160]}")
        note = checksum_note(e)
        if note:
            notes.append(f"{e['name']}: {note} ({e['checksums']})")
    return "\n".join(out + ([""] + notes if notes else []))


def chart(entries, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [s for s in SIDES if any(e[s[0]] is not None for e in entries)]
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
        xs = [e[key] if e[key] is not None else 0 for e in entries]
        ax.barh(ys, xs, height=height, label=label, color=COLORS[key])
        for y, e in zip(ys, entries):
            if e[key] is None and key in ("emlx_s", "mlx_python_s"):
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
    ax.set_title("EMLX vs Python MLX vs Nx.BinaryBackend (CPU)")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)

    ratios = [ratio(e["emlx_s"], e["mlx_python_s"]) for e in entries]
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


def main(argv):
    if len(argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    out_dir = argv[3] if len(argv) > 3 else os.path.join(os.path.dirname(__file__), "results")
    with open(argv[1]) as f:
        emlx_entries = json.load(f)
    with open(argv[2]) as f:
        mlx_entries = json.load(f)

    entries = merge(emlx_entries, mlx_entries)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "latest.json")
    png_path = os.path.join(out_dir, "latest.png")
    with open(json_path, "w") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    chart(entries, png_path)

    print(table(entries))
    print()
    print("emlx/mlx: EMLX time / Python MLX time (eager both; > 1: EMLX slower);")
    print("(min): the same ratio of the fastest runs, less sensitive to background load.")
    print("binary/emlx: BinaryBackend time / EMLX time, at the size in 'binary size'.")
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main(sys.argv)
