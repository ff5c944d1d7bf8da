#!/usr/bin/env bash
# Everything ringjobs needs on a fresh Debian 12 machine, as root: the Docker engine
# and busybox (apt, only when missing), a running dockerd, the offline test image,
# and the project in .venv. Idempotent and quick when all is there already; the
# demo, the test command and CI all start with it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DOCKERD_LOG=/var/log/dockerd.log
DOCKERD_WAIT_SECONDS=60

stage() {
    printf '\n==> %s\n' "$*"
}

fail() {
    printf '\nsetup failed: %s\n' "$*" >&2
    exit 1
}

install_system_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    test -x /bin/busybox || missing+=(busybox-static)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    if ((${#missing[@]} == 0)); then
        echo "docker.io, busybox-static and systemd are already installed"
        return
    fi
    echo "installing: ${missing[*]}"
    # Keep package scripts from starting services: .ci/run starts dockerd itself.
    local policy=/usr/sbin/policy-rc.d created_policy=""
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" </dev/null
    if [[ -n "$created_policy" ]]; then
        rm -f "$policy"
    fi
}

mount_cgroups_if_missing() {
    # The CI machines boot with cgroups mounted; this only covers one that does not.
    if ! mountpoint -q /sys/fs/cgroup && command -v cgroupfs-mount >/dev/null; then
        echo "mounting cgroups with cgroupfs-mount"
        cgroupfs-mount
    fi
}

dockerd_is_running() {
    [[ -s /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null
}

start_docker_engine() {
    if docker info >/dev/null 2>&1; then
        echo "the Docker engine already answers"
        return
    fi
    if dockerd_is_running; then
        echo "dockerd is running but not answering yet; waiting for it"
    else
        mount_cgroups_if_missing
        echo "starting dockerd (log: $DOCKERD_LOG)"
        # Detached on purpose: it keeps running after this script (CI machines are discarded).
        setsid dockerd </dev/null >>"$DOCKERD_LOG" 2>&1 &
    fi
    local deadline=$((SECONDS + DOCKERD_WAIT_SECONDS))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "--- last lines of $DOCKERD_LOG ---" >&2
            tail -n 40 "$DOCKERD_LOG" >&2 || true
            fail "the Docker engine did not answer within ${DOCKERD_WAIT_SECONDS}s"
        fi
        sleep 1
    done
    docker version --format 'Docker engine {{.Server.Version}} answers'
}

install_python_project() {
    if [[ ! -x .venv/bin/python ]]; then
        python3 -m venv .venv
    fi
    # Bytecode for the package, as a real install has: with PYTHONDONTWRITEBYTECODE set
    # (as on this machine) every CLI start would otherwise compile cli.py (~50 ms).
    # Up-to-date files are skipped; a stale one is recompiled in memory, never misused.
    .venv/bin/python -m compileall -q ringjobs >/dev/null
    # Reinstall only when the project's metadata changed since the last install.
    local stamp=.venv/.ringjobs-installed digest
    # An editable install as a plain path in a .pth file ("compat"), not setuptools'
    # import-hook finder: the finder imports pathlib, re and importlib.util at every
    # interpreter start, ~18 ms of each CLI call (bench/README.md). In the digest, so
    # an existing .venv is reinstalled once.
    local editable=(--config-settings editable_mode=compat)
    digest="$( (cat pyproject.toml; echo "${editable[*]}") | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" && -x .venv/bin/ringjobs ]]; then
        echo ".venv is up to date"
        return
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "${editable[@]}" -e '.[dev]'
    echo "$digest" >"$stamp"
}

stage "System packages (docker.io, busybox-static, systemd)"
install_system_packages

stage "Docker engine"
start_docker_engine

stage "Test image (scripts/build-test-image.sh)"
bash scripts/build-test-image.sh

stage "Python virtualenv and project (.venv)"
install_python_project
