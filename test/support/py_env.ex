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

  @doc "Runs `python args...` (stdout returned; a failure raises with its output)."
  def run!(args) do
    case System.cmd(python!(), args, stderr_to_stdout: true) do
      {out, 0} -> out
      {out, status} -> raise "#{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    end
  end

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
