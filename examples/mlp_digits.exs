# Trains a small MLP classifier (64-128-10, ReLU, softmax cross-entropy,
# mini-batch SGD), written with `defn`, on the handwritten digits dataset
# that scikit-learn ships (1797 8x8 images, 10 classes), on EMLX.Backend and
# on Nx.BinaryBackend, printing accuracy and time per epoch.
#
#     mix run examples/mlp_digits.exs
#
# Nothing is downloaded: the data is sklearn/datasets/data/digits.csv.gz of
# an installed scikit-learn, found by asking a Python that has it (EMLX_PYTHON,
# default bench/.venv/bin/python, which `bash bench/setup_venv.sh` creates).
# On EMLX the defns run through `compiler: EMLX` (one compiled MLX program
# per step); on Nx.BinaryBackend through Nx.Defn.Evaluator.

defmodule Digits do
  import Nx.Defn

  @python_code "import sklearn, os; print(os.path.dirname(sklearn.__file__))"

  ## Data

  def csv_path do
    python = System.get_env("EMLX_PYTHON", Path.expand("bench/.venv/bin/python"))

    with exe when is_binary(exe) <- System.find_executable(python),
         {dir, 0} <- System.cmd(exe, ["-c", @python_code], stderr_to_stdout: true),
         path = Path.join([String.trim(dir), "datasets", "data", "digits.csv.gz"]),
         true <- File.exists?(path) do
      {:ok, path}
    else
      _ -> {:error, python}
    end
  end

  def missing!(python) do
    IO.puts(:stderr, """
    The digits dataset was not found: #{python} cannot import scikit-learn, or
    its sklearn/datasets/data/digits.csv.gz is missing. To install it, run:

        bash bench/setup_venv.sh

    (it creates bench/.venv with scikit-learn from PyPI), or point EMLX_PYTHON
    at a Python that has scikit-learn:

        EMLX_PYTHON=/path/to/python mix run examples/mlp_digits.exs
    """)

    System.halt(1)
  end

  # Rows of 64 pixel values (0..16) and the label, comma-separated.
  def load(path) do
    rows =
      path
      |> File.read!()
      |> :zlib.gunzip()
      |> String.split("\n", trim: true)
      |> Enum.map(fn line -> line |> String.split(",") |> Enum.map(&parse_number/1) end)

    pixels = Enum.map(rows, &Enum.take(&1, 64))
    labels = Enum.map(rows, &(&1 |> List.last() |> trunc()))
    {pixels, labels}
  end

  defp parse_number(s) do
    {value, ""} = Float.parse(String.trim(s))
    value
  end

  # A fixed shuffle, then the first 80% for training and the rest for testing.
  def split({pixels, labels}, seed) do
    :rand.seed(:exsss, {seed, seed, seed})
    shuffled = Enum.shuffle(Enum.zip(pixels, labels))
    n_train = div(length(shuffled) * 4, 5)
    {train, test} = Enum.split(shuffled, n_train)
    {to_tensors(train), to_tensors(test)}
  end

  defp to_tensors(pairs) do
    {pixels, labels} = Enum.unzip(pairs)
    x = pixels |> Nx.tensor(type: :f32, backend: Nx.BinaryBackend) |> Nx.divide(16.0)
    y = Nx.tensor(labels, type: :s32, backend: Nx.BinaryBackend)
    {x, y}
  end

  ## Model

  def init_params(sizes, seed) do
    key = Nx.Random.key(seed) |> Nx.backend_transfer(Nx.BinaryBackend)

    {params, _key} =
      sizes
      |> Enum.chunk_every(2, 1, :discard)
      |> Enum.with_index(1)
      |> Enum.reduce({%{}, key}, fn {[fan_in, fan_out], i}, {acc, key} ->
        {w, key} = Nx.Random.normal(key, 0.0, :math.sqrt(2 / fan_in), shape: {fan_in, fan_out})

        acc =
          acc
          |> Map.put(:"w#{i}", w)
          |> Map.put(:"b#{i}", Nx.broadcast(Nx.tensor(0.0, backend: Nx.BinaryBackend), {fan_out}))

        {acc, key}
      end)

    params
  end

  defn predict(p, x) do
    h = Nx.max(Nx.dot(x, p.w1) + p.b1, 0)
    Nx.dot(h, p.w2) + p.b2
  end

  defn loss(p, x, labels) do
    logits = predict(p, x)
    shifted = logits - stop_grad(Nx.reduce_max(logits, axes: [1], keep_axes: true))
    log_probs = shifted - Nx.log(Nx.sum(Nx.exp(shifted), axes: [1], keep_axes: true))
    one_hot = labels |> Nx.new_axis(1) |> Nx.equal(Nx.iota({1, 10}))
    -Nx.mean(Nx.sum(one_hot * log_probs, axes: [1]))
  end

  defn train_step(p, x, labels, lr) do
    {l, g} = value_and_grad(p, &loss(&1, x, labels))

    {l,
     %{
       w1: p.w1 - lr * g.w1,
       b1: p.b1 - lr * g.b1,
       w2: p.w2 - lr * g.w2,
       b2: p.b2 - lr * g.b2
     }}
  end

  defn accuracy(p, x, labels) do
    predict(p, x) |> Nx.argmax(axis: 1) |> Nx.equal(labels) |> Nx.mean()
  end

  ## Training

  def train(backend, data, params, opts) do
    {{x_train, y_train}, {x_test, y_test}} = data
    epochs = Keyword.fetch!(opts, :epochs)
    batch = Keyword.fetch!(opts, :batch_size)
    lr = Keyword.fetch!(opts, :lr)
    compiler = Keyword.get(opts, :compiler, Nx.Defn.Evaluator)
    train_step = Nx.Defn.jit(&train_step/4, compiler: compiler)
    accuracy = Nx.Defn.jit(&accuracy/3, compiler: compiler)

    Nx.with_default_backend(backend, fn ->
      x_train = Nx.backend_copy(x_train, backend)
      y_train = Nx.backend_copy(y_train, backend)
      x_test = Nx.backend_copy(x_test, backend)
      y_test = Nx.backend_copy(y_test, backend)
      params = Map.new(params, fn {k, v} -> {k, Nx.backend_copy(v, backend)} end)

      batches =
        Enum.zip(
          Nx.to_batched(x_train, batch, leftover: :discard),
          Nx.to_batched(y_train, batch, leftover: :discard)
        )

      steps = length(batches)

      Enum.reduce(1..epochs, {params, []}, fn epoch, {params, log} ->
        t0 = System.monotonic_time()

        {params, loss} =
          batches
          |> Enum.with_index(1)
          |> Enum.reduce({params, nil}, fn {{x, y}, step}, {params, _} ->
            {loss, params} = train_step.(params, x, y, lr)
            # Reading the loss back forces the step's evaluation.
            loss = Nx.to_number(loss)
            progress(epoch, epochs, step, steps, loss)
            {params, loss}
          end)

        force(params)

        seconds =
          System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond) / 1.0e6

        train_acc = accuracy.(params, x_train, y_train) |> Nx.to_number()
        test_acc = accuracy.(params, x_test, y_test) |> Nx.to_number()

        IO.write(
          "\r  epoch #{pad(epoch, epochs)}/#{epochs}  loss #{fmt(loss, 4)}  " <>
            "train #{percent(train_acc)}  test #{percent(test_acc)}  " <>
            "#{fmt(seconds, 3)} s (#{steps} steps)#{String.duplicate(" ", 10)}\n"
        )

        {params, [%{epoch: epoch, seconds: seconds, test_acc: test_acc} | log]}
      end)
      |> elem(1)
      |> Enum.reverse()
    end)
  end

  defp force(params) do
    Enum.each(params, fn
      {_, %Nx.Tensor{data: %EMLX.Backend{}} = t} -> EMLX.eval(t)
      _ -> :ok
    end)
  end

  @bar 30

  defp progress(epoch, epochs, step, steps, loss) do
    done = div(step * @bar, steps)
    bar = String.duplicate("#", done) <> String.duplicate("-", @bar - done)

    IO.write(
      "\r  epoch #{pad(epoch, epochs)}/#{epochs}  [#{bar}] #{pad(step, steps)}/#{steps}  " <>
        "loss #{fmt(loss, 4)}"
    )
  end

  defp pad(n, max), do: n |> Integer.to_string() |> String.pad_leading(byte_size("#{max}"))
  defp fmt(x, digits), do: :erlang.float_to_binary(x / 1, decimals: digits)
  def percent(x), do: fmt(x * 100, 1) <> "%"
end

path =
  case Digits.csv_path() do
    {:ok, path} -> path
    {:error, python} -> Digits.missing!(python)
  end

{{x_train, _}, {x_test, _}} = data = path |> Digits.load() |> Digits.split(42)
params = Digits.init_params([64, 128, 10], 42)
opts = [batch_size: 32, lr: 0.1]
emlx_epochs = 10
binary_epochs = 1

IO.puts("""
digits: #{path}
#{elem(x_train.shape, 0)} training and #{elem(x_test.shape, 0)} test images of 8x8 pixels; \
MLP 64-128-10, SGD (lr #{opts[:lr]}), batch #{opts[:batch_size]}; defn compiled by EMLX (BinaryBackend: Nx.Defn.Evaluator)
""")

IO.puts("EMLX.Backend (cpu), #{emlx_epochs} epochs:")

emlx =
  Digits.train(
    {EMLX.Backend, device: :cpu},
    data,
    params,
    [epochs: emlx_epochs, compiler: EMLX] ++ opts
  )

IO.puts(
  "\nNx.BinaryBackend, #{binary_epochs} epoch only (it is much slower; " <>
    "same initial weights and batches, so the same accuracies are expected):"
)

binary = Digits.train(Nx.BinaryBackend, data, params, [epochs: binary_epochs] ++ opts)

mean_s = fn log -> Enum.sum(Enum.map(log, & &1.seconds)) / length(log) end
emlx_mean = mean_s.(emlx)
binary_mean = mean_s.(binary)

IO.puts("""

final test accuracy (EMLX, epoch #{emlx_epochs}): #{Digits.percent(List.last(emlx).test_acc)}
mean time per epoch: EMLX #{Float.round(emlx_mean, 3)} s, \
BinaryBackend #{Float.round(binary_mean, 3)} s (#{Float.round(binary_mean / emlx_mean, 1)}x)\
""")
