# What one GPU round trip costs on a host, below EMLX: a tiny op on f32[4]
# launched and waited for, N times (default 3,000, after 300 warm-ups),
# by one of three sides, each in a process of its own:
#
#   python3 bench/round_trip_floor.py mlx     # Python MLX: a + b, mx.eval;
#                                             # then split into the build,
#                                             # mx.async_eval and the wait
#   python3 bench/round_trip_floor.py torch   # PyTorch: x + y, synchronize
#   python3 bench/round_trip_floor.py driver  # the CUDA driver API through
#                                             # ctypes: a one-thread kernel
#                                             # (adds 1.0 to a float), then
#                                             # cuStreamSynchronize, or an
#                                             # event spun on, or a 4-byte copy
#
# Prints each median and 10th percentile in microseconds. EMLX's own round
# trip is the bench's eval_round_trip row (bench/emlx_bench.exs). How
# h200.json's round_trip_floor_session31 was measured.
import os
import statistics
import sys
import time

N = int(os.environ.get("RT_N", "3000"))
WARM = 300


def timed(step):
    for _ in range(WARM):
        step()
    ts = []
    for _ in range(N):
        t = time.perf_counter_ns()
        step()
        ts.append(time.perf_counter_ns() - t)
    return ts


def show(name, ts):
    p10 = sorted(ts)[len(ts) // 10]
    print(f"{name}: median {statistics.median(ts) / 1000:.1f} us, p10 {p10 / 1000:.1f} us", flush=True)


def mlx_side():
    import mlx.core as mx

    mx.set_default_device(mx.gpu)
    state = {"a": mx.ones(4)}
    b = mx.ones(4)
    mx.eval(state["a"], b)

    def step():
        state["a"] = state["a"] + b
        mx.eval(state["a"])

    show("mlx add + eval", timed(step))
    build, launch, wait = [], [], []
    for _ in range(N):
        t0 = time.perf_counter_ns()
        c = state["a"] + b
        t1 = time.perf_counter_ns()
        mx.async_eval(c)
        t2 = time.perf_counter_ns()
        mx.eval(c)
        t3 = time.perf_counter_ns()
        build.append(t1 - t0)
        launch.append(t2 - t1)
        wait.append(t3 - t2)
        state["a"] = c
    show("  the add", build)
    show("  mx.async_eval (until it returns)", launch)
    show("  then mx.eval (the wait)", wait)


def torch_side():
    import torch

    state = {"x": torch.ones(4, device="cuda")}
    y = torch.ones(4, device="cuda")

    def step():
        state["x"] = state["x"] + y
        torch.cuda.synchronize()

    show("torch add + synchronize", timed(step))


def driver_side():
    import ctypes

    cu = ctypes.CDLL("libcuda.so.1")

    def check(r, what):
        if r != 0:
            raise RuntimeError(f"{what}: CUresult {r}")

    check(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev), "major")  # compute capability
    check(cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev), "minor")
    ctx = ctypes.c_void_p()
    check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    ptx = (
        ".version 8.0\n.target sm_%d%d\n.address_size 64\n"
        ".visible .entry k(.param .u64 p) { .reg .b64 %%rd<2>; .reg .f32 %%f<2>;"
        " ld.param.u64 %%rd1, [p]; cvta.to.global.u64 %%rd1, %%rd1; ld.global.f32 %%f1, [%%rd1];"
        " add.f32 %%f1, %%f1, 0f3F800000; st.global.f32 [%%rd1], %%f1; ret; }\n" % (major.value, minor.value)
    ).encode()
    mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
    check(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(ptx)), "cuModuleLoadData")
    check(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"k"), "cuModuleGetFunction")
    buf = ctypes.c_uint64()
    check(cu.cuMemAlloc_v2(ctypes.byref(buf), ctypes.c_size_t(16)), "cuMemAlloc")
    stream, event = ctypes.c_void_p(), ctypes.c_void_p()
    check(cu.cuStreamCreate(ctypes.byref(stream), 1), "cuStreamCreate")  # non-blocking
    check(cu.cuEventCreate(ctypes.byref(event), 2), "cuEventCreate")  # no timing
    arg = ctypes.c_uint64(buf.value)
    params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(arg), ctypes.c_void_p))
    host = ctypes.c_float()

    def launch():
        check(cu.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, stream, params, None), "cuLaunchKernel")

    def spin():
        cu.cuEventRecord(event, stream)
        while cu.cuEventQuery(event) != 0:
            pass

    alone = []
    for _ in range(N):
        t = time.perf_counter_ns()
        launch()
        alone.append(time.perf_counter_ns() - t)
        cu.cuStreamSynchronize(stream)
    show("driver launch (until it returns)", alone)
    show("driver launch + cuStreamSynchronize", timed(lambda: (launch(), cu.cuStreamSynchronize(stream))))
    show("driver launch + event record, spun on", timed(lambda: (launch(), spin())))
    copy = lambda: cu.cuMemcpyDtoH_v2(ctypes.byref(host), buf, ctypes.c_size_t(4))
    show("driver launch + 4-byte copy to the host", timed(lambda: (launch(), copy())))


sides = {"mlx": mlx_side, "torch": torch_side, "driver": driver_side}
if len(sys.argv) != 2 or sys.argv[1] not in sides:
    sys.exit("usage: python3 bench/round_trip_floor.py mlx|torch|driver")
sides[sys.argv[1]]()
