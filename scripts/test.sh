#!/usr/bin/env bash
# The project's test command, shared by the README and .ci/run. It needs a running
# Docker engine and the ringjobs-test image (scripts/build-test-image.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/pytest -q "$@"
