# Progress lines of the set-up scripts, sourced by them: each step says in one line what it is about to do,
# and in one more how it ended and how long it took.
#   step NAME "what it does"; ...; step_done ["how it ended"]

step() {
  _step_name=$1
  _step_started=${EPOCHREALTIME/./}
  echo "[setup] $1: $2 ..."
}

step_done() {
  local elapsed_ms=$(( (${EPOCHREALTIME/./} - _step_started) / 1000 ))
  printf '[setup] %s: %s in %d.%d s\n' "$_step_name" "${1:-done}" $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100))
}
