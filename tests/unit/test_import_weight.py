"""The daemon's modules import neither docker-py nor cryptography nor prometheus_client (issue 7).

The fast check, without Docker; tests/acceptance/test_daemon_imports.py checks a real
daemon after real runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("docker", "requests", "urllib3", "cryptography", "prometheus_client")
_PROBE = """\
import json, sys
import ringjobs.daemon
from ringjobs.runtime.docker import DockerRuntime
DockerRuntime(None, 4)  # makes no call: nothing to import for one either
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_daemon_and_making_its_runtime_loads_no_heavy_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    modules = json.loads(done.stdout)
    assert "ringjobs.daemon" in modules
    assert [m for m in modules if m.partition(".")[0] in HEAVY] == []
