#!/usr/bin/env bash
# The main job end to end on a fresh machine: set up (Docker, image, .venv), start
# the daemon, apply an example manifest and wait for it, then show the run, its
# logs and events, two failures with their exit codes, and a dry-run prune.
# The daemon runs on a private socket and database under .demo/ and is stopped
# at the end; the history stays in .demo/ringjobs.db until the next demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

DEMO_DIR="$PWD/.demo"
rm -rf "$DEMO_DIR"  # each demo starts from an empty history
mkdir -p "$DEMO_DIR"
export RINGJOBS_SOCKET="$DEMO_DIR/ringjobs.sock"
RINGJOBS="$PWD/.venv/bin/ringjobs"
DAEMON_PID=""

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

stop_daemon() {
    if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        wait "$DAEMON_PID" || true
    fi
}
trap stop_daemon EXIT

printf '\n==> Starting the daemon (log: %s)\n' "$DEMO_DIR/daemon.log"
"$RINGJOBS" daemon --socket "$RINGJOBS_SOCKET" --database "$DEMO_DIR/ringjobs.db" \
    >>"$DEMO_DIR/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do
    [[ -S "$RINGJOBS_SOCKET" ]] && "$RINGJOBS" doctor >/dev/null 2>&1 && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DEMO_DIR/daemon.log"; exit 1; }
    sleep 0.1
done
run "$RINGJOBS" doctor

printf '\n==> A migration, applied and waited for (exit code = the job'"'"'s)\n'
run "$RINGJOBS" apply -f examples/migrate.yaml --wait --logs
RUN_ID="$("$RINGJOBS" run list -n demo --job migrate -o json |
    .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["id"])')"
run "$RINGJOBS" run list -n demo
run "$RINGJOBS" logs "$RUN_ID"
run "$RINGJOBS" run events "$RUN_ID"
run "$RINGJOBS" run inspect "$RUN_ID"

printf '\n==> Re-applying the same manifest changes nothing\n'
run "$RINGJOBS" apply -f examples/migrate.yaml

printf '\n==> Failures: the exit code of --wait tells which\n'
say "$RINGJOBS apply -f examples/failing.yaml --wait"
set +e
"$RINGJOBS" apply -f examples/failing.yaml --wait
code=$?
set -e
printf '(apply --wait exited %s: the first failing run'"'"'s code; 3 = exit_code, 137 = oom_killed)\n' "$code"
run "$RINGJOBS" run list -n demo

printf '\n==> The container is gone, the logs stay until a prune\n'
run docker ps -a --filter label=io.ringjobs.namespace=demo --format '{{.Names}} {{.Status}}'
run "$RINGJOBS" namespace prune demo --dry-run

printf '\nDemo done. History is kept in %s; to look again:\n' "$DEMO_DIR/ringjobs.db"
printf '  .venv/bin/ringjobs daemon --socket %s --database %s &\n' \
    "$RINGJOBS_SOCKET" "$DEMO_DIR/ringjobs.db"
printf '  RINGJOBS_SOCKET=%s .venv/bin/ringjobs run list -n demo\n' "$RINGJOBS_SOCKET"
