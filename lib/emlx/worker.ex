defmodule EMLX.Worker do
  @moduledoc """
  Waiting on a command queue's worker thread.

  `EMLX.NIF`'s MLX work is posted to the worker and returns at once: a job
  reference whose reply `await/1` receives (a short job's reply may come
  back already, polled for by the NIF: `{:emlx_done, reply}`), or pending
  arrays, which
  `info/1` and `strides/1` wait for. `run_op/4`, `from_binary/4` and
  `post_program/4` post and, when the queue is deep, wait until the worker
  has brought it down to its low mark (backpressure).
  """

  alias EMLX.NIF

  @doc """
  Waits for the reply to a posted job and unwraps it. A bad argument found
  by the worker raises `ArgumentError`; an MLX failure `EMLX.NIFError`.
  """
  @spec await(NIF.job()) :: term()
  def await(job) do
    {:ok, value} = await(job, :infinity)
    value
  end

  @doc """
  As `await/1`, giving up after `timeout` ms: returns `{:ok, value}` or
  `:timeout` (a reply that comes later stays in the caller's mailbox).
  """
  @spec await(NIF.job(), timeout()) :: {:ok, term()} | :timeout
  def await({:emlx_done, reply}, _timeout), do: {:ok, unwrap(reply)}

  def await(ref, timeout) when is_reference(ref) do
    receive do
      {^ref, reply} -> {:ok, unwrap(reply)}
    after
      timeout -> :timeout
    end
  end

  defp unwrap(:ok), do: :ok
  defp unwrap({:ok, value}), do: value
  defp unwrap({:error, :argument, message}), do: raise(ArgumentError, message)
  defp unwrap({:error, :mlx, message}), do: raise(EMLX.NIFError, message)

  @doc "Runs `EMLX.NIF.op/4`, waiting for the worker when the queue is deep."
  @spec run_op(NIF.queue(), atom(), list(), Nx.Type.t() | nil) :: NIF.array() | [NIF.array()]
  def run_op(queue, name, args, out_type),
    do: posted(queue, NIF.op(queue, name, args, out_type))

  @doc """
  Runs `EMLX.NIF.program_post/4` (the outputs come back pending), waiting
  for the worker when the queue is deep.
  """
  @spec post_program(NIF.queue(), reference(), [NIF.array()], boolean()) :: [NIF.array()]
  def post_program(queue, program, inputs, fuse),
    do: posted(queue, NIF.program_post(queue, program, inputs, fuse))

  @doc """
  Runs `EMLX.NIF.from_binary/4` (the array comes back made, or pending
  when posted), waiting for the worker when the queue is deep.
  """
  @spec from_binary(NIF.queue(), binary(), tuple(), Nx.Type.t()) :: NIF.array()
  def from_binary(queue, binary, shape, type),
    do: posted(queue, NIF.from_binary(queue, binary, shape, type))

  # Past the backpressure depth the caller waits until the worker has
  # brought the queue down to its low mark, not until it is empty: the
  # worker keeps jobs to run while the caller posts more.
  defp posted(queue, {:wait, result}) do
    with ref when is_reference(ref) <- NIF.queue_wait_low(queue), do: await(ref)
    result
  end

  defp posted(_queue, result), do: result

  @doc "`{shape, type, owner_queue}` of an array, waiting for a pending one."
  @spec info(NIF.array()) :: {tuple(), NIF.type(), NIF.queue()}
  def info(array), do: when_computed(&NIF.array_info/1, array)

  @doc "The strides of an array (in elements), waiting for a pending one."
  @spec strides(NIF.array()) :: tuple()
  def strides(array), do: when_computed(&NIF.array_strides/1, array)

  # A pending array is computed once its queue has drained up to now.
  defp when_computed(fun, array) do
    case fun.(array) do
      {:pending, owner} ->
        owner |> NIF.queue_drain() |> await()
        when_computed(fun, array)

      result ->
        result
    end
  end
end
