defmodule EMLX.Dispatch do
  @moduledoc """
  The one place where EMLX's ops reach MLX.

  An op runs eagerly, posted through the NIF to its command queue's
  worker, or, while `compiler: EMLX` records a `defn` in this process,
  becomes an instruction of the recorder's program (`EMLX.Defn.Recorder`).
  Either way its result is a *handle*: a real array (a reference) when
  eager, a placeholder while recording. Ops take handles as arguments;
  `materialize/1` turns one into a real array for code that reads data.
  """

  alias EMLX.Defn.Recorder

  @typedoc "A real MLX array, or the recorder's placeholder for one."
  @type handle :: EMLX.NIF.array() | Recorder.placeholder()

  @doc """
  Runs op `name` of the op table on `queue` with `args` (arrays as
  handles), casting results to `out_type` unless nil. Returns a handle, or
  a list of them for ops with several results.
  """
  @spec run(EMLX.NIF.queue(), atom(), list(), Nx.Type.t() | nil) :: handle | [handle]
  def run(queue, name, args, out_type) do
    if Recorder.active?(),
      do: Recorder.record(name, args, out_type),
      else: EMLX.Worker.run_op(queue, name, args, out_type)
  end

  @doc "The real array behind a handle (the recording runs up to it first)."
  @spec materialize(handle) :: EMLX.NIF.array()
  def materialize(ref) when is_reference(ref), do: ref
  def materialize(placeholder), do: Recorder.materialize(placeholder)
end
