#!/usr/bin/env bash
# The project's test command (the README's, and the one CI runs): set up whatever is
# missing (Docker engine, busybox test image, .venv), then run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k oom`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
printf '\n==> Tests (pytest)\n' >&2
exec .venv/bin/pytest -q "$@"
