"""The Python MLX half of the benchmark suite: the workloads of
bench/emlx_bench.exs, same names, sizes and input values, on MLX's CPU
device or, with BENCH_DEVICE=gpu, its GPU (the same libmlx that EMLX links).

    bench/.venv/bin/python bench/mlx_bench.py [OUT.json]
    bench/.venv/bin/python bench/mlx_bench.py --serve OUT.json
    bench/.venv/bin/python bench/mlx_bench.py --device-info

Usually run by bench/run.sh, through bench/emlx_bench.exs, which drives the
--serve mode so that both sides of a workload are timed back to back. Each entry of OUT.json: name, params,
mlx_python_s (plain eager MLX), mlx_compiled_s (the same function through
mx.compile, where that applies; else null), numpy_s (the same work in numpy,
on its own OpenBLAS, where numpy has it: f32 matmul, softmax, SVD, QR, eigh;
else null), iters, min_s, checksums, peak_bytes (MLX's peak memory over the
timed runs; null for numpy), errors. Times are the median seconds per
iteration after warm-up; mx.eval on every output is inside the timed region.

Environment: BENCH_ONLY=regex runs only the matching workloads;
BENCH_TARGET_S (default 1.5) is the time each measurement aims to spend;
BENCH_DEVICE=cpu|gpu (default cpu) picks the device and the workload sizes
(workloads_gpu below); --device-info prints the device's name and exits
(1 when the device is not available). MLX_ENABLE_TF32 (MLX's own switch:
TF32 for f32 matmuls on CUDA unless "0"; MLX's default is on) is set by
bench/emlx_bench.exs to what EMLX uses; on the GPU the f32 matmul rows are
named matmul_N_f32_tf32 when it is on.
"""

import json
import math
import os
import re
import statistics
import sys
import time

import mlx.core as mx

try:
    import numpy as np
except ImportError:  # the numpy column is then left empty
    np = None

DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
if DEVICE not in ("cpu", "gpu"):
    sys.exit(f"mlx_bench: BENCH_DEVICE must be cpu or gpu, got: {DEVICE!r}")
if not mx.is_available(getattr(mx, DEVICE)):
    sys.exit(f"mlx_bench: MLX has no {DEVICE} device here (mlx {mx.__version__})")
mx.set_default_device(getattr(mx, DEVICE))


def tf32_enabled():
    """What MLX does with MLX_ENABLE_TF32: on unless set to the integer 0."""
    try:
        return int(os.environ.get("MLX_ENABLE_TF32", "1")) != 0
    except ValueError:
        return False

TYPES = {"f32": mx.float32, "bf16": mx.bfloat16}


# Synthetic data, identical to EMLXBench.synth/4:
# sin(0.37 * i + phase) * scale over the flat index i.
def synth(shape, dtype, scale, phase):
    n = math.prod(shape)
    x = mx.sin(mx.arange(n, dtype=mx.float32) * 0.37 + phase) * scale
    return x.reshape(shape).astype(dtype)


# A full-rank matrix for the decompositions, identical to EMLXBench.square/1:
# ((i mod 4093)^2 mod 4093) / 4093 - 0.5 over the flat index i.
def square(n):
    q = mx.arange(n * n, dtype=mx.int32) % 4093
    return ((q * q % 4093).astype(mx.float32) / 4093 - 0.5).reshape(n, n)


def evaluated(tree):
    mx.eval(tree)
    return tree


## The workload functions (the defns of bench/emlx_bench.exs)


def elementwise_chain(x):
    return mx.tanh(mx.exp(x) * 2 + 1)


def matmul(a, b):
    return a @ b


def softmax(x):
    e = mx.exp(x - mx.max(x, axis=-1, keepdims=True))
    return e / mx.sum(e, axis=-1, keepdims=True)


def conv2d(x_nhwc, w_ohwi):
    return mx.conv2d(x_nhwc, w_ohwi, stride=1, padding=1)


def mlp_predict(p, x):
    h = mx.maximum(x @ p["w1"] + p["b1"], 0)
    h = mx.maximum(h @ p["w2"] + p["b2"], 0)
    return h @ p["w3"] + p["b3"]


def mlp_loss(p, x, y):
    logits = mlp_predict(p, x)
    shifted = logits - mx.stop_gradient(mx.max(logits, axis=1, keepdims=True))
    log_probs = shifted - mx.log(mx.sum(mx.exp(shifted), axis=1, keepdims=True))
    return -mx.mean(mx.sum(y * log_probs, axis=1))


_mlp_value_and_grad = mx.value_and_grad(mlp_loss)


def mlp_train_step(p, x, y, lr):
    loss, g = _mlp_value_and_grad(p, x, y)
    return loss, {k: p[k] - lr * g[k] for k in p}


def layer_norm(x, g, b):
    c = x - mx.mean(x, axis=-1, keepdims=True)
    var = mx.mean(c * c, axis=-1, keepdims=True)
    return c * mx.rsqrt(var + 1.0e-5) * g + b


def gelu(x):
    return 0.5 * x * (1 + mx.erf(x * 0.7071067811865476))


def transformer_block(x, p, heads):
    s, d = x.shape
    dh = d // heads

    def split(t):
        return t.reshape(s, heads, dh).transpose(1, 0, 2)

    h = layer_norm(x, p["ln1_g"], p["ln1_b"])
    q = split(h @ p["w_q"] + p["b_q"])
    k = split(h @ p["w_k"] + p["b_k"])
    v = split(h @ p["w_v"] + p["b_v"])
    scores = (q @ k.transpose(0, 2, 1)) * (1.0 / math.sqrt(dh))
    attn = (softmax(scores) @ v).transpose(1, 0, 2).reshape(s, d)
    x = x + attn @ p["w_o"] + p["b_o"]
    h = layer_norm(x, p["ln2_g"], p["ln2_b"])
    return x + gelu(h @ p["w_1"] + p["b_1"]) @ p["w_2"] + p["b_2"]


## Inputs


def mlp_params(sizes):
    p = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:]), start=1):
        p[f"w{i}"] = synth((fan_in, fan_out), mx.float32, 1 / math.sqrt(fan_in), i)
        p[f"b{i}"] = synth((fan_out,), mx.float32, 0.01, i + 0.5)
    return p


def mlp_batch(batch, features, classes):
    x = synth((batch, features), mx.float32, 1.0, 0.25)
    labels = mx.arange(batch, dtype=mx.int32) % classes
    y = (labels[:, None] == mx.arange(classes, dtype=mx.int32)[None, :]).astype(mx.float32)
    return x, y


def block_params(d):
    ffn = 4 * d
    s = 1 / math.sqrt(d)
    f32 = mx.float32
    return {
        "ln1_g": synth((d,), f32, 0.1, 1.0) + 1.0,
        "ln1_b": synth((d,), f32, 0.1, 2.0),
        "w_q": synth((d, d), f32, s, 3.0),
        "b_q": synth((d,), f32, 0.01, 4.0),
        "w_k": synth((d, d), f32, s, 5.0),
        "b_k": synth((d,), f32, 0.01, 6.0),
        "w_v": synth((d, d), f32, s, 7.0),
        "b_v": synth((d,), f32, 0.01, 8.0),
        "w_o": synth((d, d), f32, s, 9.0),
        "b_o": synth((d,), f32, 0.01, 10.0),
        "ln2_g": synth((d,), f32, 0.1, 11.0) + 1.0,
        "ln2_b": synth((d,), f32, 0.1, 12.0),
        "w_1": synth((d, ffn), f32, s, 13.0),
        "b_1": synth((ffn,), f32, 0.01, 14.0),
        "w_2": synth((ffn, d), f32, 1 / math.sqrt(ffn), 15.0),
        "b_2": synth((d,), f32, 0.01, 16.0),
    }


## Workloads: name, params, setup() -> (eager_fn, compiled_fn or None),
## and optionally reps (the times the functions repeat their step: the time
## reported is that of one step). Names and sizes match bench/emlx_bench.exs.

DISPATCH_N = 10_000


def adds(n, eval_each):
    """n chained adds on f32[4], with an mx.eval after each or once at the end."""
    x = evaluated(mx.arange(4, dtype=mx.float32))
    b = evaluated(mx.array([1.0, 1.0, 1.0, 1.0]))

    def run():
        acc = x
        for _ in range(n):
            acc = acc + b
            if eval_each:
                mx.eval(acc)
        return acc

    return run


def dispatch(mode):
    def setup():
        return adds(DISPATCH_N, mode == "eval_each"), None

    how = "eval after each" if mode == "eval_each" else "one eval at the end"
    return f"dispatch_add_{mode}", f"{DISPATCH_N} x add on f32[4], {how}", setup


def tensor_dispatch():
    """A new array from host values, then an add, DISPATCH_N times, one eval at the end."""

    def setup():
        x = evaluated(mx.arange(4, dtype=mx.float32))

        def run():
            acc = x
            for i in range(1, DISPATCH_N + 1):
                acc = acc + mx.array([float(i), 0.0, 0.0, 0.0])
            return acc

        return run, None

    return "dispatch_tensor_add", f"{DISPATCH_N} x (mx.array of f32[4] + add), one eval at the end", setup


def round_trip(reps):
    """One eval round trip: a tiny op, then mx.eval, reps times per timed run."""

    def setup():
        return adds(reps, True), None

    params = f"one add on f32[4] + mx.eval; time per round trip (runs of {reps})"
    return "eval_round_trip", params, setup, reps


def count(n):
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def elementwise(n):
    def setup():
        x = evaluated(synth((n,), mx.float32, 2.0, 0.0))
        compiled = mx.compile(elementwise_chain)
        return (lambda: elementwise_chain(x)), (lambda: compiled(x))

    return f"elementwise_chain_{count(n)}", f"tanh(exp(x) * 2 + 1), x f32[{n}]", setup


## numpy (OpenBLAS) versions, where a workload has one: the same inputs,
## copied out of MLX.


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def to_numpy(a):
    return np.array(a) if np is not None else None


def matmul_w(n, type_name, precision=None):
    """precision (GPU f32 only): "full" or "tf32", in the name and params."""
    suffix, note = {
        None: ("", ""),
        "full": ("", ", full f32 (MLX_ENABLE_TF32=0)"),
        "tf32": ("_tf32", ", TF32 (MLX_ENABLE_TF32=1)"),
    }[precision]

    def setup():
        dtype = TYPES[type_name]
        a = evaluated(synth((n, n), dtype, 1.0, 0.0))
        b = evaluated(synth((n, n), dtype, 1.0, 1.0))
        if np is None or type_name != "f32" or DEVICE != "cpu":
            return (lambda: matmul(a, b)), None
        na, nb = to_numpy(a), to_numpy(b)
        return (lambda: matmul(a, b)), None, (lambda: na @ nb)

    return (
        f"matmul_{n}_{type_name}{suffix}",
        f"{type_name}[{n}x{n}] . {type_name}[{n}x{n}]{note}",
        setup,
    )


def softmax_w(n):
    def setup():
        x = evaluated(synth((n, n), mx.float32, 4.0, 0.0))
        compiled = mx.compile(softmax)
        if np is None or DEVICE != "cpu":
            return (lambda: softmax(x)), (lambda: compiled(x))
        nx = to_numpy(x)
        return (lambda: softmax(x)), (lambda: compiled(x)), (lambda: np_softmax(nx))

    return f"softmax_{n}x{n}", f"softmax over the last axis of f32[{n}x{n}]", setup


def layer_norm_w(rows, d):
    """The transformer block's layer norm alone (as EMLXBench's layer_norm/2)."""

    def setup():
        x = evaluated(synth((rows, d), mx.float32, 2.0, 0.0))
        g = evaluated(synth((d,), mx.float32, 0.1, 1.0) + 1.0)
        b = evaluated(synth((d,), mx.float32, 0.1, 2.0))
        compiled = mx.compile(layer_norm)
        return (lambda: layer_norm(x, g, b)), (lambda: compiled(x, g, b))

    params = f"(x - mean) * rsqrt(var + 1e-5) * g + b over the last axis of f32[{rows}x{d}]"
    return f"layer_norm_{rows}x{d}", params, setup


LINALG = {
    "svd": (lambda a: mx.linalg.svd(a, stream=mx.cpu), lambda a: np.linalg.svd(a)),
    "qr": (lambda a: mx.linalg.qr(a, stream=mx.cpu), lambda a: np.linalg.qr(a)),
    "eigh": (lambda a: mx.linalg.eigh(a, stream=mx.cpu), lambda a: np.linalg.eigh(a)),
}


def linalg(kind, n):
    """SVD / QR / eigh of square(n) (eigh: its symmetric part), on MLX's CPU
    stream (MLX has them on the CPU only) and in numpy."""

    def setup():
        m = square(n)
        a = evaluated((m + m.T) * 0.5 if kind == "eigh" else m)
        mlx_fn, np_fn = LINALG[kind]
        if np is None:
            return (lambda: mlx_fn(a)), None
        na = to_numpy(a)
        return (lambda: mlx_fn(a)), None, (lambda: np_fn(na))

    params = f"Nx.LinAlg.{kind} of f32[{n}x{n}]" + (", symmetric" if kind == "eigh" else "")
    return f"{kind}_{n}", params, setup


def conv(shape, out_c, nhwc=False):
    batch, c, h, w = shape

    def setup():
        # Built in Nx's NCHW / OIHW layout (same values as the EMLX side),
        # then laid out as MLX wants them: NHWC input, OHWI weights. The
        # output is NHWC (EMLX's is NCHW): the same values, so the same
        # checksum (the sum of |x| does not depend on the layout).
        x = evaluated(synth(shape, mx.float32, 1.0, 0.0).transpose(0, 2, 3, 1))
        k = synth((out_c, c, 3, 3), mx.float32, 1 / math.sqrt(c * 9), 1.0)
        k = evaluated(k.transpose(0, 2, 3, 1))
        return (lambda: conv2d(x, k)), None

    if nhwc:
        # EMLX's side takes NHWC tensors too (Nx.conv's permutations): the
        # same call here
        return (
            f"conv2d_nhwc_b{batch}_c{c}_{h}x{w}_k3",
            f"conv2d NHWC f32[{batch}x{h}x{w}x{c}], kernel {out_c}x{c}x3x3, same padding",
            setup,
        )
    return (
        f"conv2d_b{batch}_c{c}_{h}x{w}_k3",
        f"conv2d NCHW f32[{batch}x{c}x{h}x{w}], kernel {out_c}x{c}x3x3, same padding",
        setup,
    )


def mlp(sizes, batch):
    layers = "-".join(str(s) for s in sizes)

    def setup():
        params = evaluated(mlp_params(sizes))
        x, y = evaluated(mlp_batch(batch, sizes[0], sizes[-1]))
        compiled = mx.compile(mlp_train_step)
        return (
            (lambda: mlp_train_step(params, x, y, 0.01)),
            (lambda: compiled(params, x, y, 0.01)),
        )

    return (
        f"mlp_train_step_{layers}_b{batch}",
        f"MLP {layers} f32, batch {batch}: loss + grads + SGD update (mx.value_and_grad)",
        setup,
    )


def transformer(seq, d, heads):
    def setup():
        x = evaluated(synth((seq, d), mx.float32, 1.0, 0.0))
        p = evaluated(block_params(d))
        compiled = mx.compile(lambda x, p: transformer_block(x, p, heads))
        return (lambda: transformer_block(x, p, heads)), (lambda: compiled(x, p))

    return (
        f"transformer_block_s{seq}_d{d}_h{heads}",
        f"pre-norm encoder block forward, seq {seq}, d {d}, {heads} heads, MLP {4 * d}",
        setup,
    )


def while_loop(iters, size):
    """The loop a Python user writes: the condition read each iteration
    (.item()), the body plain or under mx.compile."""

    def step(acc):
        return mx.tanh(acc * 0.99 + 0.1)

    def setup():
        x = evaluated(synth((size,), mx.float32, 1.0, 0.0))
        compiled_step = mx.compile(step)

        def run(body):
            i, acc, n = mx.array(0), x, mx.array(iters)
            while (i < n).item():
                i, acc = i + 1, body(acc)
            return acc

        return (lambda: run(step)), (lambda: run(compiled_step))

    return (
        f"while_loop_{count(iters)}_f32_{size}",
        f"while loop: {iters} x tanh(x * 0.99 + 0.1) on f32[{size}], condition read each time",
        setup,
    )


WORKLOADS_CPU = [
    dispatch("no_eval"),
    dispatch("eval_each"),
    tensor_dispatch(),
    round_trip(1_000),
    elementwise(10_000_000),
    elementwise(100_000),
    matmul_w(2048, "f32"),
    matmul_w(2048, "bf16"),
    matmul_w(1024, "f32"),
    matmul_w(1024, "bf16"),
    matmul_w(128, "f32"),
    matmul_w(128, "bf16"),
    softmax_w(4096),
    softmax_w(2048),
    softmax_w(256),
    layer_norm_w(4096, 768),
    linalg("svd", 512),
    linalg("qr", 512),
    linalg("eigh", 512),
    conv((32, 64, 56, 56), 64),
    conv((32, 64, 56, 56), 64, nhwc=True),
    conv((1, 8, 16, 16), 8),
    mlp([784, 512, 512, 10], 128),
    mlp([784, 64, 64, 10], 8),
    transformer(512, 768, 12),
    transformer(32, 64, 4),
    while_loop(1_000, 64),
]


def workloads_gpu(tf32):
    """The GPU sizes (as EMLXBench.workloads(:gpu, tf32?))."""
    precision = "tf32" if tf32 else "full"
    return [
        dispatch("no_eval"),
        dispatch("eval_each"),
        tensor_dispatch(),
        round_trip(1_000),
        elementwise(64_000_000),
        matmul_w(8192, "bf16"),
        matmul_w(8192, "f32", precision),
        matmul_w(4096, "f32", precision),
        softmax_w(8192),
        layer_norm_w(16384, 4096),
        conv((32, 64, 56, 56), 64),
        conv((32, 64, 56, 56), 64, nhwc=True),
        mlp([784, 512, 512, 10], 128),
        transformer(512, 768, 12),
    ]


WORKLOADS = workloads_gpu(tf32_enabled()) if DEVICE == "gpu" else WORKLOADS_CPU


## Timing: as in bench/emlx_bench.exs. Warm up (at least once, until 0.25 s
## have passed, at most 5 runs), then timed runs until both min_iters runs
## and target_s seconds are done (at most max_iters runs); the median,
## divided by reps. mx.eval waits for the (on the GPU asynchronous) work,
## inside the timed region. MLX sides also record MLX's peak memory over the
## timed runs (reset after the warm-up; the inputs and the first run's
## output, kept for the checksum, count in it, as on the EMLX side).


def force(out):
    if not (np is not None and all(isinstance(t, np.ndarray) for t in leaves(out))):
        mx.eval(out)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    force(out)
    return time.perf_counter() - t0, out


def leaves(tree):
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in leaves(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in leaves(item)]
    if np is not None and hasattr(tree, "_fields"):  # numpy's named result tuples
        return [leaf for item in tuple(tree) for leaf in leaves(item)]
    return [tree]


def checksum(tree):
    # numpy results are summed by MLX too: the sum's own rounding differs
    # between the two (numpy sums pairwise).
    def one(t):
        t = mx.array(t) if np is not None and isinstance(t, np.ndarray) else t
        return mx.sum(mx.abs(t.astype(mx.float32))).item()

    return sum(one(t) for t in leaves(tree))


def measure(fn, target_s, reps=1, min_iters=3, max_iters=25, memory=True):
    spent, out = timed(fn)
    runs = 1
    while spent < 0.25 and runs < 5:
        spent, runs = spent + timed(fn)[0], runs + 1
    if memory:
        mx.reset_peak_memory()
    times = []
    while len(times) < max_iters and (len(times) < min_iters or sum(times) < target_s):
        times.append(timed(fn)[0])
    times = [t / reps for t in times]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "iters": len(times),
        "checksum": checksum(out),
        "peak_bytes": mx.get_peak_memory() if memory else None,
    }


SIDES = ("mlx_python", "mlx_compiled", "numpy")


def run_workload(workload, target_s, quiet=False):
    """Times one workload; returns its entry and a one-line summary."""
    name, params, setup, *rest = workload
    reps = rest[0] if rest else 1
    if not quiet:
        print(f"mlx_bench: {name} ...", end="", file=sys.stderr, flush=True)
    entry = {
        "name": name,
        "params": params,
        **{f"{side}_s": None for side in SIDES},
        **{key: dict.fromkeys(SIDES) for key in ("iters", "min_s", "checksums", "peak_bytes")},
        "errors": {},
    }

    try:
        fns = setup()
    except Exception as e:  # noqa: BLE001 - recorded in the results
        fns = ()
        entry["errors"]["mlx_python"] = f"{type(e).__name__}: {e}"

    for side, fn in zip(SIDES, fns):
        if fn is None:
            continue
        try:
            result = measure(fn, target_s, reps, memory=side != "numpy")
            entry[f"{side}_s"] = result["median_s"]
            entry["iters"][side] = result["iters"]
            entry["min_s"][side] = result["min_s"]
            entry["checksums"][side] = result["checksum"]
            entry["peak_bytes"][side] = result["peak_bytes"]
        except Exception as e:  # noqa: BLE001 - recorded in the results
            entry["errors"][side] = f"{type(e).__name__}: {e}"

    def show(side):
        if entry[f"{side}_s"] is not None:
            return f"{entry[f'{side}_s']:.6g} s ({entry['iters'][side]} runs)"
        return "error" if side in entry["errors"] else "-"

    labels = (("MLX py", "mlx_python"), ("MLX compiled", "mlx_compiled"), ("numpy", "numpy"))
    summary = ", ".join(f"{label} {show(side)}" for label, side in labels)
    if not quiet:
        print(f" {summary}", file=sys.stderr)
    return entry, summary


def write(entries, out_path):
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(entries, f, indent=1)
    print(f"mlx_bench: wrote {out_path}", file=sys.stderr)


def serve(out_path, target_s):
    """Runs the workloads named on stdin, one a line, answering
    "done NAME<TAB>summary" on stdout after each; "quit" (or end of input)
    writes OUT.json, answers "bye" and exits. bench/emlx_bench.exs drives this, so that each
    workload's two sides are timed back to back."""
    by_name = {w[0]: w for w in WORKLOADS}
    entries = []
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        if name in by_name:
            entry, summary = run_workload(by_name[name], target_s, quiet=True)
            entries.append(entry)
        else:
            summary = "MLX py: no such workload in bench/mlx_bench.py"
        print(f"done {name}\t{summary}", flush=True)
    write(entries, out_path)
    print("bye", flush=True)


def main(argv):
    target_s = float(os.environ.get("BENCH_TARGET_S", "1.5"))
    if len(argv) > 1 and argv[1] == "--device-info":
        info = mx.device_info()
        print(info.get("device_name") or f"{DEVICE} ({info})")
        return
    if len(argv) > 1 and argv[1] == "--serve":
        serve(argv[2], target_s)
        return

    out_path = argv[1] if len(argv) > 1 else "bench/results/mlx_python.json"
    only = os.environ.get("BENCH_ONLY")
    entries = [
        run_workload(w, target_s)[0] for w in WORKLOADS if not only or re.search(only, w[0])
    ]
    write(entries, out_path)


if __name__ == "__main__":
    main(sys.argv)
