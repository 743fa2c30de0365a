# The Python MLX side of bench/run_ahead.exs: 10,000 chained adds on f32[4]
# and one mx.eval, on the device given as the first argument (gpu or cpu).
# Reads a count n per line on stdin, runs the loop n times, and prints the
# n times in seconds on one line.
import sys
import time

import mlx.core as mx

mx.set_default_device(mx.gpu if sys.argv[1:] == ["gpu"] else mx.cpu)
x = mx.arange(4, dtype=mx.float32)
b = mx.array([1.0, 1.0, 1.0, 1.0])
mx.eval(x, b)


def run():
    acc = x
    for _ in range(10_000):
        acc = acc + b
    mx.eval(acc)


run()
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    print(" ".join(f"{v:.6f}" for v in times), flush=True)
