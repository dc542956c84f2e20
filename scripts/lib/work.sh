# Sourced by scripts that run a child in the background: a scratch
# directory $work, removed on exit, and stop_child PID (kill and reap it;
# nothing for an empty PID). The exit trap stops the child in $child.
work="$(mktemp -d)"
child=""
stop_child() {
  if [ -n "${1:-}" ]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}
trap 'stop_child "$child"; rm -rf "$work"' EXIT
