"""Counters the engine keeps for /metrics; plain data, exported by the API layer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class EngineMetrics:
    """Monotonic counts since the daemon started."""

    runs_finished: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    log_lines: int = 0
    log_bytes: int = 0

    def run_finished(self, namespace: str, status: str, reason: str | None) -> None:
        self.runs_finished[(namespace, status, reason or "")] += 1
