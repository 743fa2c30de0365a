# The Elixir half of the benchmark suite: every workload on EMLX.Backend
# (eager: plain Nx calls, and `defn` run by the default Nx.Defn.Evaluator) and,
# at the sizes it can finish in time, on Nx.BinaryBackend.
#
#     mix run bench/emlx_bench.exs [EMLX_OUT.json [MLX_OUT.json]]
#
# With MLX_OUT.json it also drives bench/mlx_bench.py (the same workloads on
# Python MLX; BENCH_PYTHON names the interpreter, default
# bench/.venv/bin/python), workload by workload, so that both sides of each
# are timed back to back. Usually run by bench/run.sh, which then runs
# bench/report.py (merge, table, chart).
#
# Each entry of EMLX_OUT.json: name, params, emlx_s, emlx_compiled_s (null
# with BENCH_EMLX_COMPILED=0, see below), binary_s, size (the size
# BinaryBackend ran, null when it did not run), iters, min_s (the fastest
# run), checksums, peak_bytes (MLX's peak memory over the timed runs, EMLX
# sides), errors. Times are the median seconds per iteration after
# warm-up; evaluation is forced inside the timed region (EMLX.eval on every
# output; BinaryBackend computes eagerly).
#
# Environment: BENCH_ONLY=regex runs only the matching workloads;
# BENCH_TARGET_S (default 1.5) is the time each measurement aims to spend;
# every defn workload also runs through `Nx.Defn.jit(fun, compiler: EMLX)`
# into emlx_compiled_s (BENCH_EMLX_COMPILED=0 skips it). BENCH_QUIET=seconds
# waits, before each workload, until the machine's CPUs are at least 90%
# idle over one second (for a shared machine; at most that many seconds);
# each entry records the idle fraction it started at as cpu_idle.
#
# BENCH_DEVICE=cpu|gpu (default cpu) picks the device of both sides: EMLX
# runs on `{EMLX.Backend, device: :gpu}` and `compiler: EMLX, device: :gpu`,
# Python MLX on mx.gpu, and the GPU workload sizes replace the CPU ones
# (workloads/2; BinaryBackend does not run there). The run stops at once,
# naming the device, when EMLX cannot use it.
#
# f32 matmul precision (MLX's CUDA backend uses TF32 for f32 matmuls unless
# MLX_ENABLE_TF32=0, read once per process): the setting EMLX uses (a
# pre-set MLX_ENABLE_TF32, else "1" with `config :emlx, :matmul_precision,
# :tf32`, else "0", full f32) is pinned in this process and handed to the
# Python side, so both sides compute alike. On the GPU the f32 matmul rows
# are named `matmul_N_f32_tf32` when TF32 is on; bench/run_gpu.sh runs them
# in a second pass with MLX_ENABLE_TF32=1 (the CPU ignores the setting).

defmodule EMLXBench.Defns do
  @moduledoc false
  # Every workload except the dispatch loops is one `defn`, run eagerly
  # (Nx.Defn.Evaluator, one backend call per op) and compiled by EMLX.
  import Nx.Defn

  defn elementwise_chain(x), do: Nx.tanh(Nx.exp(x) * 2 + 1)

  defn matmul(a, b), do: Nx.dot(a, b)

  defn softmax(x) do
    e = Nx.exp(x - Nx.reduce_max(x, axes: [-1], keep_axes: true))
    e / Nx.sum(e, axes: [-1], keep_axes: true)
  end

  defn svd(a), do: Nx.LinAlg.svd(a)
  defn qr(a), do: Nx.LinAlg.qr(a)
  defn eigh(a), do: Nx.LinAlg.eigh(a)

  # NCHW input, OIHW kernel (Nx's defaults), stride 1, "same" padding.
  defn conv2d(x, k), do: Nx.conv(x, k, padding: :same)

  # The same conv on NHWC tensors (Axon's channels: :last), kernel OIHW.
  defn conv2d_nhwc(x, k) do
    Nx.conv(x, k,
      padding: :same,
      input_permutation: [0, 3, 1, 2],
      output_permutation: [0, 3, 1, 2]
    )
  end

  ## MLP (three layers), ReLU, softmax cross-entropy, plain SGD

  defn mlp_predict(p, x) do
    h = Nx.max(Nx.dot(x, p.w1) + p.b1, 0)
    h = Nx.max(Nx.dot(h, p.w2) + p.b2, 0)
    Nx.dot(h, p.w3) + p.b3
  end

  defn mlp_loss(p, x, y) do
    logits = mlp_predict(p, x)
    shifted = logits - stop_grad(Nx.reduce_max(logits, axes: [1], keep_axes: true))
    log_probs = shifted - Nx.log(Nx.sum(Nx.exp(shifted), axes: [1], keep_axes: true))
    -Nx.mean(Nx.sum(y * log_probs, axes: [1]))
  end

  defn mlp_train_step(p, x, y, lr) do
    {loss, g} = value_and_grad(p, &mlp_loss(&1, x, y))

    {loss,
     %{
       w1: p.w1 - lr * g.w1,
       b1: p.b1 - lr * g.b1,
       w2: p.w2 - lr * g.w2,
       b2: p.b2 - lr * g.b2,
       w3: p.w3 - lr * g.w3,
       b3: p.b3 - lr * g.b3
     }}
  end

  ## One pre-norm transformer encoder block (no mask), GELU MLP of 4*d

  defn layer_norm(x, g, b) do
    c = x - Nx.mean(x, axes: [-1], keep_axes: true)
    var = Nx.mean(c * c, axes: [-1], keep_axes: true)
    c * Nx.rsqrt(var + 1.0e-5) * g + b
  end

  defn gelu(x), do: 0.5 * x * (1 + Nx.erf(x * 0.7071067811865476))

  defn transformer_block(x, p, opts \\ []) do
    opts = keyword!(opts, heads: 12)
    h = layer_norm(x, p.ln1_g, p.ln1_b)
    q = split_heads(Nx.dot(h, p.w_q) + p.b_q, opts[:heads])
    k = split_heads(Nx.dot(h, p.w_k) + p.b_k, opts[:heads])
    v = split_heads(Nx.dot(h, p.w_v) + p.b_v, opts[:heads])
    # {heads, seq, seq}
    scores = Nx.dot(q, [2], [0], k, [2], [0]) * head_scale(q)
    # {heads, seq, d_head}
    attn = Nx.dot(softmax(scores), [2], [0], v, [1], [0])
    x = x + Nx.dot(merge_heads(attn), p.w_o) + p.b_o
    h = layer_norm(x, p.ln2_g, p.ln2_b)
    x + Nx.dot(gelu(Nx.dot(h, p.w_1) + p.b_1), p.w_2) + p.b_2
  end

  deftransformp split_heads(t, heads) do
    {s, d} = Nx.shape(t)
    t |> Nx.reshape({s, heads, div(d, heads)}) |> Nx.transpose(axes: [1, 0, 2])
  end

  deftransformp merge_heads(t) do
    {heads, s, dh} = Nx.shape(t)
    t |> Nx.transpose(axes: [1, 0, 2]) |> Nx.reshape({s, heads * dh})
  end

  deftransformp head_scale(q), do: 1.0 / :math.sqrt(elem(Nx.shape(q), 2))

  ## A loop whose condition is read each iteration: `n` steps of a small body

  defn while_loop(x, n) do
    {_, acc, _} =
      while {i = 0, acc = x, n}, i < n do
        {i + 1, Nx.tanh(acc * 0.99 + 0.1), n}
      end

    acc
  end
end

# MLXPython (bench/mlx_python.exs) drives bench/mlx_bench.py --serve;
# BenchQuiet (bench/quiet.exs) waits for idle CPUs (BENCH_QUIET).
Code.require_file("mlx_python.exs", __DIR__)
Code.require_file("quiet.exs", __DIR__)
Code.require_file("timing.exs", __DIR__)

defmodule EMLXBench do
  @moduledoc false
  import BenchTiming
  alias EMLXBench.Defns

  @binary Nx.BinaryBackend

  ## Synthetic data, identical on every side (bench/mlx_bench.py builds the
  ## same values): sin(0.37 * i + phase) * scale over the flat index i.

  def synth(shape, type, scale, phase) do
    n = Tuple.product(shape)

    Nx.iota({n}, type: :f32)
    |> Nx.multiply(0.37)
    |> Nx.add(phase)
    |> Nx.sin()
    |> Nx.multiply(scale)
    |> Nx.reshape(shape)
    |> Nx.as_type(type)
  end

  # A full-rank matrix for the decompositions (synth/4's values have rank
  # 2), from integer arithmetic so that every side builds the same values:
  # ((i mod 4093)^2 mod 4093) / 4093 - 0.5 over the flat index i.
  def square(n) do
    q = Nx.remainder(Nx.iota({n * n}, type: :s32), 4093)

    Nx.multiply(q, q)
    |> Nx.remainder(4093)
    |> Nx.as_type(:f32)
    |> Nx.divide(4093)
    |> Nx.subtract(0.5)
    |> Nx.reshape({n, n})
  end

  def mlp_params(sizes) do
    sizes
    |> Enum.chunk_every(2, 1, :discard)
    |> Enum.with_index(1)
    |> Enum.flat_map(fn {[fan_in, fan_out], i} ->
      [
        {:"w#{i}", synth({fan_in, fan_out}, :f32, 1 / :math.sqrt(fan_in), i)},
        {:"b#{i}", synth({fan_out}, :f32, 0.01, i + 0.5)}
      ]
    end)
    |> Map.new()
  end

  def mlp_batch(batch, features, classes) do
    x = synth({batch, features}, :f32, 1.0, 0.25)
    labels = Nx.remainder(Nx.iota({batch}, type: :s32), classes)
    y = Nx.equal(Nx.new_axis(labels, 1), Nx.iota({1, classes}, type: :s32)) |> Nx.as_type(:f32)
    {x, y}
  end

  def block_params(d) do
    ffn = 4 * d
    s = 1 / :math.sqrt(d)

    %{
      ln1_g: Nx.add(synth({d}, :f32, 0.1, 1.0), 1.0),
      ln1_b: synth({d}, :f32, 0.1, 2.0),
      w_q: synth({d, d}, :f32, s, 3.0),
      b_q: synth({d}, :f32, 0.01, 4.0),
      w_k: synth({d, d}, :f32, s, 5.0),
      b_k: synth({d}, :f32, 0.01, 6.0),
      w_v: synth({d, d}, :f32, s, 7.0),
      b_v: synth({d}, :f32, 0.01, 8.0),
      w_o: synth({d, d}, :f32, s, 9.0),
      b_o: synth({d}, :f32, 0.01, 10.0),
      ln2_g: Nx.add(synth({d}, :f32, 0.1, 11.0), 1.0),
      ln2_b: synth({d}, :f32, 0.1, 12.0),
      w_1: synth({d, ffn}, :f32, s, 13.0),
      b_1: synth({ffn}, :f32, 0.01, 14.0),
      w_2: synth({ffn, d}, :f32, 1 / :math.sqrt(ffn), 15.0),
      b_2: synth({d}, :f32, 0.01, 16.0)
    }
  end

  ## Workloads. `binary: true` rows also run on Nx.BinaryBackend. Each
  ## setup runs with the side's backend as the default, gets `jit` (the
  ## identity for eager runs: a defn called directly runs on
  ## Nx.Defn.Evaluator) and returns the function to time. `reps: n` rows
  ## repeat their step n times per timed run and report the time of one.

  def workloads(:cpu, _tf32?) do
    [
      dispatch(:no_eval),
      dispatch(:eval_each),
      tensor_dispatch(),
      round_trip(1_000),
      elementwise(10_000_000, false),
      elementwise(100_000, true),
      matmul(2048, :f32, false),
      matmul(2048, :bf16, false),
      matmul(1024, :f32, false),
      matmul(1024, :bf16, false),
      matmul(128, :f32, true),
      matmul(128, :bf16, true),
      softmax(4096, false),
      softmax(2048, false),
      softmax(256, true),
      layer_norm(4096, 768),
      linalg(:svd, 512),
      linalg(:qr, 512),
      linalg(:eigh, 512),
      conv({32, 64, 56, 56}, 64, false),
      conv_nhwc({32, 64, 56, 56}, 64),
      conv({1, 8, 16, 16}, 8, true),
      mlp([784, 512, 512, 10], 128, false),
      mlp([784, 64, 64, 10], 8, true),
      transformer(512, 768, 12, false),
      transformer(32, 64, 4, true),
      while_loop(1_000, 64, true)
    ]
  end

  # The GPU sizes (bench/mlx_bench.py has the same list); no BinaryBackend.
  def workloads(:gpu, tf32?) do
    precision = if tf32?, do: :tf32, else: :full

    [
      dispatch(:no_eval),
      dispatch(:eval_each),
      tensor_dispatch(),
      round_trip(1_000),
      elementwise(64_000_000, false),
      matmul(8192, :bf16, false),
      matmul(8192, :f32, false, precision),
      matmul(4096, :f32, false, precision),
      softmax(8192, false),
      layer_norm(16384, 4096),
      conv({32, 64, 56, 56}, 64, false),
      conv_nhwc({32, 64, 56, 56}, 64),
      mlp([784, 512, 512, 10], 128, false),
      transformer(512, 768, 12, false)
    ]
    |> Enum.map(&%{&1 | binary: false})
  end

  @dispatch_n 10_000

  defp dispatch(mode) do
    %{
      name: "dispatch_add_#{mode}",
      params:
        "#{@dispatch_n} x Nx.add on f32[4], " <>
          if(mode == :eval_each, do: "eval after each", else: "one eval at the end"),
      size: "#{@dispatch_n} x f32[4]",
      binary: true,
      defn: false,
      setup: fn _jit ->
        x = evaluated(Nx.iota({4}, type: :f32))
        b = evaluated(Nx.tensor([1.0, 1.0, 1.0, 1.0]))

        case mode do
          :no_eval ->
            fn -> Enum.reduce(1..@dispatch_n, x, fn _, acc -> Nx.add(acc, b) end) end

          :eval_each ->
            fn -> Enum.reduce(1..@dispatch_n, x, fn _, acc -> force(Nx.add(acc, b)) end) end
        end
      end
    }
  end

  # A new tensor from host values, then an add, @dispatch_n times, one eval
  # at the end: Nx.tensor/2 (from_binary) on the dispatch path.
  defp tensor_dispatch do
    %{
      name: "dispatch_tensor_add",
      params: "#{@dispatch_n} x (Nx.tensor of f32[4] + Nx.add), one eval at the end",
      size: "#{@dispatch_n} x f32[4]",
      binary: true,
      defn: false,
      setup: fn _jit ->
        x = evaluated(Nx.iota({4}, type: :f32))

        fn ->
          Enum.reduce(1..@dispatch_n, x, fn i, acc ->
            Nx.add(acc, Nx.tensor([i, 0.0, 0.0, 0.0]))
          end)
        end
      end
    }
  end

  # One eval round trip: a tiny op, then EMLX.eval, `reps` times per timed
  # run; the time reported is that of one round trip.
  defp round_trip(reps) do
    %{
      name: "eval_round_trip",
      params: "one Nx.add on f32[4] + EMLX.eval; time per round trip (runs of #{reps})",
      size: "f32[4]",
      binary: false,
      defn: false,
      reps: reps,
      setup: fn _jit ->
        x = evaluated(Nx.iota({4}, type: :f32))
        b = evaluated(Nx.tensor([1.0, 1.0, 1.0, 1.0]))
        fn -> Enum.reduce(1..reps, x, fn _, acc -> evaluated(Nx.add(acc, b)) end) end
      end
    }
  end

  defp elementwise(n, binary) do
    %{
      name: "elementwise_chain_#{count(n)}",
      params: "tanh(exp(x) * 2 + 1), x f32[#{n}]",
      size: "f32[#{n}]",
      binary: binary,
      setup: fn jit ->
        x = evaluated(synth({n}, :f32, 2.0, 0.0))
        f = jit.(&Defns.elementwise_chain/1)
        fn -> f.(x) end
      end
    }
  end

  # `precision` (GPU f32 only): :full or :tf32, in the name and params.
  defp matmul(n, type, binary, precision \\ nil) do
    {suffix, note} =
      case precision do
        nil -> {"", ""}
        :full -> {"", ", full f32 (MLX_ENABLE_TF32=0)"}
        :tf32 -> {"_tf32", ", TF32 (MLX_ENABLE_TF32=1)"}
      end

    %{
      name: "matmul_#{n}_#{type}#{suffix}",
      params: "#{type}[#{n}x#{n}] . #{type}[#{n}x#{n}]#{note}",
      size: "#{n}x#{n}",
      binary: binary,
      setup: fn jit ->
        a = evaluated(synth({n, n}, type, 1.0, 0.0))
        b = evaluated(synth({n, n}, type, 1.0, 1.0))
        f = jit.(&Defns.matmul/2)
        fn -> f.(a, b) end
      end
    }
  end

  defp softmax(n, binary) do
    %{
      name: "softmax_#{n}x#{n}",
      params: "softmax over the last axis of f32[#{n}x#{n}]",
      size: "#{n}x#{n}",
      binary: binary,
      setup: fn jit ->
        x = evaluated(synth({n, n}, :f32, 4.0, 0.0))
        f = jit.(&Defns.softmax/1)
        fn -> f.(x) end
      end
    }
  end

  # The transformer block's layer norm alone over rows of d (compiled, one
  # MLX layer norm: EMLX.Defn.Fusion).
  defp layer_norm(rows, d) do
    %{
      name: "layer_norm_#{rows}x#{d}",
      params: "(x - mean) * rsqrt(var + 1e-5) * g + b over the last axis of f32[#{rows}x#{d}]",
      size: "#{rows}x#{d}",
      binary: false,
      setup: fn jit ->
        x = evaluated(synth({rows, d}, :f32, 2.0, 0.0))
        g = evaluated(Nx.add(synth({d}, :f32, 0.1, 1.0), 1.0))
        b = evaluated(synth({d}, :f32, 0.1, 2.0))
        f = jit.(&Defns.layer_norm/3)
        fn -> f.(x, g, b) end
      end
    }
  end

  # Nx.LinAlg.svd / qr / eigh of square(n) (eigh: its symmetric part).
  defp linalg(kind, n) do
    %{
      name: "#{kind}_#{n}",
      params:
        "Nx.LinAlg.#{kind} of f32[#{n}x#{n}]" <> if(kind == :eigh, do: ", symmetric", else: ""),
      size: "#{n}x#{n}",
      binary: false,
      setup: fn jit ->
        m = square(n)
        a = evaluated(if kind == :eigh, do: Nx.multiply(Nx.add(m, Nx.transpose(m)), 0.5), else: m)
        f = jit.(Function.capture(Defns, kind, 1))
        fn -> f.(a) end
      end
    }
  end

  defp conv({batch, c, h, w} = shape, out_c, binary) do
    %{
      name: "conv2d_b#{batch}_c#{c}_#{h}x#{w}_k3",
      params: "conv2d NCHW f32[#{batch}x#{c}x#{h}x#{w}], kernel #{out_c}x#{c}x3x3, same padding",
      size: "#{batch}x#{c}x#{h}x#{w}",
      binary: binary,
      setup: fn jit ->
        x = evaluated(synth(shape, :f32, 1.0, 0.0))
        k = evaluated(synth({out_c, c, 3, 3}, :f32, 1 / :math.sqrt(c * 9), 1.0))
        f = jit.(&Defns.conv2d/2)
        fn -> f.(x, k) end
      end
    }
  end

  # The conv above with channels last (Nx.conv's input and output
  # permutations, as Axon's conv layers call it): MLX's own layout, which
  # Python MLX's side of both rows uses.
  defp conv_nhwc({batch, c, h, w} = shape, out_c) do
    %{
      name: "conv2d_nhwc_b#{batch}_c#{c}_#{h}x#{w}_k3",
      params: "conv2d NHWC f32[#{batch}x#{h}x#{w}x#{c}], kernel #{out_c}x#{c}x3x3, same padding",
      size: "#{batch}x#{h}x#{w}x#{c}",
      binary: false,
      setup: fn jit ->
        x = evaluated(Nx.transpose(synth(shape, :f32, 1.0, 0.0), axes: [0, 2, 3, 1]))
        k = evaluated(synth({out_c, c, 3, 3}, :f32, 1 / :math.sqrt(c * 9), 1.0))
        f = jit.(&Defns.conv2d_nhwc/2)
        fn -> f.(x, k) end
      end
    }
  end

  defp mlp(sizes, batch, binary) do
    layers = Enum.join(sizes, "-")

    %{
      name: "mlp_train_step_#{layers}_b#{batch}",
      params: "MLP #{layers} f32, batch #{batch}: loss + grads + SGD update (defn)",
      size: "#{layers}, batch #{batch}",
      binary: binary,
      setup: fn jit ->
        params = evaluated(mlp_params(sizes))
        {x, y} = evaluated(mlp_batch(batch, hd(sizes), List.last(sizes)))
        f = jit.(&Defns.mlp_train_step/4)
        fn -> f.(params, x, y, 0.01) end
      end
    }
  end

  defp transformer(seq, d, heads, binary) do
    %{
      name: "transformer_block_s#{seq}_d#{d}_h#{heads}",
      params: "pre-norm encoder block forward, seq #{seq}, d #{d}, #{heads} heads, MLP #{4 * d}",
      size: "seq #{seq}, d #{d}",
      binary: binary,
      setup: fn jit ->
        x = evaluated(synth({seq, d}, :f32, 1.0, 0.0))
        p = evaluated(block_params(d))
        f = jit.(&Defns.transformer_block(&1, &2, heads: heads))
        fn -> f.(x, p) end
      end
    }
  end

  defp while_loop(iters, size, binary) do
    %{
      name: "while_loop_#{count(iters)}_f32_#{size}",
      params:
        "while loop: #{iters} x tanh(x * 0.99 + 0.1) on f32[#{size}], condition read each time",
      size: "#{iters} x f32[#{size}]",
      binary: binary,
      setup: fn jit ->
        x = evaluated(synth({size}, :f32, 1.0, 0.0))
        f = jit.(&Defns.while_loop/2)
        fn -> f.(x, iters) end
      end
    }
  end

  defp count(n) when rem(n, 1_000_000) == 0, do: "#{div(n, 1_000_000)}M"
  defp count(n) when rem(n, 1_000) == 0, do: "#{div(n, 1_000)}k"
  defp count(n), do: "#{n}"

  ## Running one side of one workload, errors caught (conv raises on EMLX
  ## until it is implemented: the entry then says so and stays null).

  def run_side(workload, backend, target_s, min_iters, max_iters, jit \\ & &1) do
    previous = Nx.default_backend(backend)

    device =
      case backend do
        {EMLX.Backend, opts} -> Keyword.fetch!(opts, :device)
        _ -> nil
      end

    try do
      fun = workload.setup.(jit)
      {:ok, measure(fun, target_s, min_iters, max_iters, Map.get(workload, :reps, 1), device)}
    rescue
      e -> {:error, e.__struct__ |> inspect() |> Kernel.<>(": " <> Exception.message(e))}
    after
      Nx.default_backend(previous)
    end
  end

  def main(argv) do
    {emlx_out, mlx_out} =
      case argv do
        [] -> {"bench/results/emlx.json", nil}
        [emlx_out] -> {emlx_out, nil}
        [emlx_out, mlx_out | _] -> {emlx_out, mlx_out}
      end

    target_s = String.to_float(System.get_env("BENCH_TARGET_S", "1.5"))
    only = System.get_env("BENCH_ONLY")
    compiled? = System.get_env("BENCH_EMLX_COMPILED", "1") in ["1", "true"]
    rounds = String.to_integer(System.get_env("BENCH_ROUNDS", "1"))
    quiet_s = String.to_integer(System.get_env("BENCH_QUIET", "0"))
    device = bench_device()
    emlx = {EMLX.Backend, device: device}
    check_device!(emlx)
    tf32 = pin_tf32()

    workloads =
      device
      |> workloads(match?({n, _} when n != 0, Integer.parse(tf32)))
      |> Enum.filter(fn w -> is_nil(only) or Regex.match?(~r/#{only}/, w.name) end)

    IO.puts(:stderr, "bench: device #{device}, MLX_ENABLE_TF32=#{tf32}")
    python = if mlx_out, do: MLXPython.start(mlx_out, device, tf32)

    entries =
      Enum.map(workloads, fn w ->
        idle = BenchQuiet.wait_quiet(quiet_s)
        jit = &Nx.Defn.jit(&1, compiler: EMLX, device: device)

        # Each round runs Python MLX and EMLX (eager, then compiled) back to
        # back, Python first in odd rounds and last in even ones, so that
        # what the first side leaves behind (a GPU that has warmed up and
        # slowed its clock under a long matmul) falls on each side alike
        # (BENCH_ROUNDS; Python keeps one entry a round, report.py takes the
        # median of each side's rounds as this side does).
        per_round =
          for round <- 1..rounds do
            python_run = fn -> if python, do: MLXPython.run(python, w.name) <> ", " end
            first = if rem(round, 2) == 1, do: python_run.()

            eager = run_side(w, emlx, target_s, 3, 25)

            compiled =
              if compiled? and Map.get(w, :defn, true),
                do: run_side(w, emlx, target_s, 3, 25, jit),
                else: :skipped

            mlx_summary = if rem(round, 2) == 1, do: first, else: python_run.()
            {mlx_summary, eager, compiled}
          end

        {mlx_summary, _, _} = List.last(per_round)
        emlx_result = per_round |> Enum.map(&elem(&1, 1)) |> BenchTiming.combine_rounds()
        compiled = per_round |> Enum.map(&elem(&1, 2)) |> BenchTiming.combine_rounds()

        binary =
          if w.binary, do: run_side(w, @binary, target_s * 2 / 3, 3, 10), else: :skipped

        IO.puts(
          :stderr,
          "bench: #{w.name}: #{mlx_summary}EMLX #{describe(emlx_result)}, " <>
            if(compiled?, do: "EMLX compiled #{describe(compiled)}, ", else: "") <>
            "BinaryBackend #{describe(binary)}"
        )

        w |> entry(emlx_result, compiled, binary) |> Map.put(:cpu_idle, idle)
      end)

    if python, do: MLXPython.stop(python)

    File.mkdir_p!(Path.dirname(emlx_out))
    File.write!(emlx_out, JSON.encode!(entries))
    IO.puts(:stderr, "emlx_bench: wrote #{emlx_out}")
  end

  defp bench_device do
    case System.get_env("BENCH_DEVICE", "cpu") do
      "cpu" -> :cpu
      "gpu" -> :gpu
      other -> stop("BENCH_DEVICE must be cpu or gpu, got: #{inspect(other)}")
    end
  end

  # Stops the whole run, naming the device, when EMLX cannot use it (for
  # :gpu: an MLX build without a GPU backend, or no GPU).
  defp check_device!({EMLX.Backend, device: device} = backend) do
    Nx.tensor([1.0], backend: backend) |> EMLX.eval()
  rescue
    e -> stop("EMLX cannot run on device #{device}: #{Exception.message(e)}")
  end

  # The MLX_ENABLE_TF32 setting EMLX uses: a pre-set value, else "1" with
  # `config :emlx, :matmul_precision, :tf32`, else "0" (full f32). Pinned in
  # this OS process (MLX reads it once, at the first operation that could
  # use it: a matmul, not the device check before it) and handed
  # to the Python side by MLXPython.start/3.
  defp pin_tf32 do
    tf32 =
      case System.get_env("MLX_ENABLE_TF32") do
        value when value not in [nil, ""] -> value
        _ -> if Application.get_env(:emlx, :matmul_precision) == :tf32, do: "1", else: "0"
      end

    System.put_env("MLX_ENABLE_TF32", tf32)
    tf32
  end

  defp stop(message) do
    IO.puts(:stderr, "bench: " <> message)
    System.halt(1)
  end

  defp entry(w, emlx, compiled, binary) do
    sides = [emlx: emlx, emlx_compiled: compiled, binary: binary]
    errors = for {side, {:error, message}} <- sides, into: %{}, do: {side, message}

    round_s = Map.new(sides, fn {side, result} -> {side, value(result, :round_s)} end)

    %{
      name: w.name,
      params: w.params,
      emlx_s: value(emlx, :median_s),
      emlx_compiled_s: value(compiled, :median_s),
      binary_s: value(binary, :median_s),
      size: if(match?({:ok, _}, binary), do: w.size),
      iters: Map.new(sides, fn {side, result} -> {side, value(result, :iters)} end),
      min_s: Map.new(sides, fn {side, result} -> {side, value(result, :min_s)} end),
      checksums: Map.new(sides, fn {side, result} -> {side, value(result, :checksum)} end),
      peak_bytes: Map.new(sides, fn {side, result} -> {side, value(result, :peak_bytes)} end),
      errors: errors
    }
    |> then(&if(Enum.any?(Map.values(round_s)), do: Map.put(&1, :round_s, round_s), else: &1))
  end

  defp value({:ok, result}, key), do: Map.get(result, key)
  defp value(_, _key), do: nil

  defp describe({:ok, %{median_s: s, iters: n}}), do: "#{Float.round(s, 6)} s (#{n} runs)"
  defp describe({:error, message}), do: "error (#{String.slice(message, 0, 80)})"
  defp describe(:skipped), do: "skipped"
end

EMLXBench.main(System.argv())
