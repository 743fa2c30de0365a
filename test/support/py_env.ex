defmodule EMLX.PyEnv do
  @moduledoc """
  The Python that the interop tests run: a venv with `mlx==0.32.4`,
  `mlx-cpu==0.32.4` and `mlx-lm==0.32.0`, made by `scripts/setup.sh` at
  `$EMLX_PYENV`, else `$EMLX_HOME/pyenv`, else `/opt/emlx/pyenv`. A missing
  venv fails the test that needs it, loudly: these tests are part of CI.
  """

  @doc "The venv's python, or a raise that says how to make it."
  def python! do
    dir =
      System.get_env("EMLX_PYENV") ||
        Path.join(System.get_env("EMLX_HOME") || "/opt/emlx", "pyenv")

    python = Path.join(dir, "bin/python")

    unless File.exists?(python) do
      raise "the MLX Python venv is missing: no #{python}. Run `bash scripts/setup.sh` " <>
              "(it installs mlx, mlx-cpu and mlx-lm there from PyPI), or point EMLX_PYENV at such a venv"
    end

    python
  end

  @doc "Runs `python args...` with the venv's python (see `cmd/2`)."
  def run!(args), do: python!() |> cmd(args) |> ok!(args)

  @doc """
  Runs `exe args...` (stderr with stdout) as `System.cmd/3` does, killed
  past `EMLX_PY_TIMEOUT` seconds (default 600; status 137): on the GPU host,
  with the suite's parts side by side, a reference process that never
  returned left its test module waiting with no timeout of its own.
  """
  def cmd(exe, args) do
    case System.find_executable("timeout") do
      nil -> System.cmd(exe, args, stderr_to_stdout: true)
      t -> System.cmd(t, ["-s", "KILL", limit(), exe | args], stderr_to_stdout: true)
    end
  end

  defp limit, do: System.get_env("EMLX_PY_TIMEOUT", "600")

  defp ok!({out, 0}, _args), do: out

  defp ok!({out, 137}, args),
    do: raise("#{Enum.join(args, " ")} was killed (137: past #{limit()} s, or a signal):\n#{out}")

  defp ok!({out, status}, args),
    do: raise("#{Enum.join(args, " ")} exited with #{status}:\n#{out}")

  @doc "Runs a Python snippet with `argv` (stdout returned)."
  def eval!(code, argv \\ []), do: run!(["-c", code | argv])

  @doc "The last stdout line of `scripts/mlx_lm_ref.py args...`, decoded as JSON."
  def mlx_lm_ref!(args) do
    script = Path.expand("../../scripts/mlx_lm_ref.py", __DIR__)

    run!([script | args])
    |> String.split("\n", trim: true)
    |> List.last()
    |> JSON.decode!()
  end
end
