# Sourced by .ci/run and by developers: puts the toolchain EMLX needs on
# PATH and, on machines without Hex access, points Mix at the prepared
# offline dependencies. Fails loudly, naming what is missing.
#
#   EMLX_HOME       where scripts/setup.sh installs things (default /opt/emlx)
#   EMLX_DEPS_PATH  folder with nx/, complex/, telemetry/ checkouts
#                   (default $EMLX_HOME/deps when it exists)

EMLX_HOME="${EMLX_HOME:-/opt/emlx}"
export EMLX_HOME

emlx_env_fail() {
  echo "EMLX environment: $*" >&2
  if [ -n "${EMLX_IN_SETUP:-}" ]; then
    echo "See README.md, 'Dependencies without Hex access', for what must be there." >&2
  else
    echo "Run 'bash scripts/setup.sh' first (see README.md, 'Set-up')." >&2
  fi
  return 1 2>/dev/null || exit 1
}

emlx_elixir_ok() {
  command -v elixir >/dev/null 2>&1 &&
    elixir -e 'unless Version.match?(System.version(), ">= 1.18.0"), do: System.halt(1)' >/dev/null 2>&1
}

if ! emlx_elixir_ok; then
  for dir in "$EMLX_HOME"/elixir-*/bin; do
    [ -x "$dir/elixir" ] && export PATH="$dir:$PATH"
  done
fi
emlx_elixir_ok || emlx_env_fail "no Elixir >= 1.18 on PATH or under $EMLX_HOME/elixir-*/bin" || return 1 2>/dev/null || exit 1

if [ -z "${EMLX_DEPS_PATH:-}" ] && [ -d "$EMLX_HOME/deps" ]; then
  export EMLX_DEPS_PATH="$EMLX_HOME/deps"
fi

if [ -n "${EMLX_DEPS_PATH:-}" ]; then
  missing=""
  for dep in nx complex telemetry; do
    [ -f "$EMLX_DEPS_PATH/$dep/mix.exs" ] || missing="$missing $EMLX_DEPS_PATH/$dep"
  done
  [ -z "$missing" ] || emlx_env_fail "offline dependencies missing:$missing (each a checkout with its mix.exs: nx 0.13.x, complex, telemetry)" || return 1 2>/dev/null || exit 1
  ls "${MIX_HOME:-$HOME/.mix}"/archives/hex* >/dev/null 2>&1 ||
    emlx_env_fail "no Hex archive in ${MIX_HOME:-$HOME/.mix}/archives (Mix needs Hex installed even for path dependencies)" || return 1 2>/dev/null || exit 1
  export HEX_OFFLINE=1
fi
