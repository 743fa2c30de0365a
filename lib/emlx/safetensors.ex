defmodule EMLX.SafeTensors do
  @moduledoc """
  `.safetensors` files in and out with MLX's own reader and writer
  (`mlx::core::load_safetensors` and `save_safetensors`), run on a command
  queue's worker thread like every other piece of MLX work.

      tensors = EMLX.load_safetensors("model.safetensors")
      tensors["model.embed_tokens.weight"]   #=> a bf16 tensor on EMLX.Backend

      EMLX.save_safetensors("out.safetensors", %{"w" => Nx.iota({2, 3})})

  Element types stay as they are in the file (bf16 and f16 included); a
  `BOOL` tensor becomes `{:u, 8}`, as every MLX boolean does in Nx. MLX's
  format has no f64: saving an f64 tensor raises `ArgumentError` (cast it
  to f32 first), and a file with `F64` tensors raises `EMLX.NIFError`. Files
  written by Python MLX (`mx.save_safetensors`), by mlx-lm and by
  Hugging Face's `safetensors` read alike.

  A path that does not exist raises `File.Error`; a file MLX cannot read
  (not safetensors, truncated, an element type EMLX lacks) and a failed
  write raise `EMLX.NIFError` with MLX's message.

  For mlx-lm's quantized layout (`name.weight` packed u32, `name.scales`,
  `name.biases`) see `EMLX.Quantization.from_packed/2`.
  """

  alias EMLX.{CommandQueue, NIF, Types, Worker}
  alias Nx.Tensor, as: T

  @doc """
  Reads a `.safetensors` file into `%{name => tensor}` (tensors on
  `EMLX.Backend`).

  Options:

    * `:device` - `:cpu` or `:gpu` (default `EMLX.default_device/0`)
    * `:metadata` - when `true`, returns `{tensors, metadata}` with the
      file's `__metadata__` strings as a map (default `false`)
  """
  @spec load(Path.t(), keyword()) :: %{String.t() => T.t()} | {map(), map()}
  def load(path, opts \\ []) do
    opts = Keyword.validate!(opts, [:device, metadata: false])
    device = opts[:device] || CommandQueue.default_device()
    path = IO.chardata_to_string(path)

    case File.stat(path) do
      {:ok, %File.Stat{type: :regular}} ->
        :ok

      {:ok, _} ->
        raise File.Error, reason: :eisdir, action: "read safetensors from", path: path

      {:error, reason} ->
        raise File.Error, reason: reason, action: "read safetensors from", path: path
    end

    queue = CommandQueue.resolve(device)
    {arrays, metadata} = NIF.load_safetensors(queue, path) |> Worker.await()
    tensors = Map.new(arrays, fn {name, ref} -> {name, EMLX.Backend.to_nx({device, ref})} end)

    if opts[:metadata], do: {tensors, Map.new(metadata)}, else: tensors
  end

  @doc """
  Writes `%{name => tensor}` (or a list of `{name, tensor}`) to a
  `.safetensors` file. Names are strings (atoms are converted); tensors
  of any backend are copied to EMLX first. As MLX's writer does, a path
  that does not end in `.safetensors` gets that extension.

  Options:

    * `:metadata` - a map of strings for the file's `__metadata__`
      (mlx-lm writes `%{"format" => "mlx"}`)
    * `:device` - the device whose worker writes the file (default: the
      first EMLX tensor's, else `EMLX.default_device/0`)
  """
  @spec save(Path.t(), Enumerable.t(), keyword()) :: :ok
  def save(path, tensors, opts \\ []) do
    opts = Keyword.validate!(opts, [:device, metadata: %{}])
    path = IO.chardata_to_string(path)
    dir = Path.dirname(path)

    unless File.dir?(dir) do
      raise File.Error, reason: :enoent, action: "write safetensors to", path: path
    end

    tensors = Enum.map(tensors, fn {name, t} -> {name_string!(name), tensor!(name, t)} end)
    device = opts[:device] || first_device(tensors)
    queue = CommandQueue.resolve(device)
    arrays = Enum.map(tensors, fn {name, t} -> {name, EMLX.Backend.ref_on(t, device, queue)} end)
    metadata = Enum.map(opts[:metadata], fn {k, v} -> {name_string!(k), name_string!(v)} end)

    NIF.save_safetensors(queue, path, arrays, metadata) |> Worker.await()
  end

  defp name_string!(name) when is_binary(name), do: name
  defp name_string!(name) when is_atom(name), do: Atom.to_string(name)

  defp name_string!(other),
    do:
      raise(
        ArgumentError,
        "safetensors names and metadata must be strings, got: #{inspect(other)}"
      )

  defp tensor!(name, %T{vectorized_axes: [_ | _]}) do
    raise ArgumentError, "safetensors: #{inspect(name)} is vectorized; devectorize it first"
  end

  defp tensor!(name, %T{} = t) do
    if EMLX.Quantization.quantized?(t) do
      raise ArgumentError,
            "safetensors: #{inspect(name)} is a quantized tensor; save its packed weight, scales " <>
              "and biases (EMLX.Quantization.parts/1) under names of their own"
    end

    Types.native!(t.type, "safetensors (MLX's writer)")
    t
  end

  defp tensor!(name, other) do
    raise ArgumentError, "safetensors: #{inspect(name)} must be a tensor, got: #{inspect(other)}"
  end

  defp first_device(tensors) do
    Enum.find_value(tensors, CommandQueue.default_device(), fn
      {_, %T{data: %EMLX.Backend{device: device}}} -> device
      _ -> nil
    end)
  end
end
