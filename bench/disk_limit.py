"""A disk as slow as a VPS's, for a benchmark's reads: a cgroup v1 blkio throttle.

This VM's disk is cached by its host and reads at 1-3 GiB/s, faster than a small VPS's
block storage (AWS gp3 volumes start at 125 MiB/s and go to 1,000). A reader of a file
that keeps up with such a disk is "at disk speed" when the disk is the limit; here that
is only seen with the disk held to a VPS's rate. Its readahead, too, is this VM's own
(8 MiB), not the kernel's default (128 KiB: VM_READAHEAD_PAGES), which a disk has unless
its driver or the system sets another. Needs root and cgroup v1's blkio controller
(cgroup v2's io.max is not handled: not available to test here).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

BLKIO = Path("/sys/fs/cgroup/blkio")


class DiskLimitUnavailable(Exception):
    """The disk cannot be limited here; the message says why."""


def whole_disk(path: Path) -> Path:
    """The sysfs directory of the disk that holds `path` (blkio throttles whole disks
    only, and readahead is the disk's): its `dev` file holds MAJ:MIN."""
    dev = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not node.exists():
        raise DiskLimitUnavailable(f"{path} is not on a block device (tmpfs or overlay?)")
    if (node / "partition").exists():  # a partition: its disk is the parent directory
        node = node.resolve().parent
    return node


@contextlib.contextmanager
def readahead(path: Path, kib: int | None) -> Iterator[int]:
    """The readahead of `path`'s disk set to `kib` KiB (None: left as it is) meanwhile,
    then set back; yields the KiB in force."""
    setting = whole_disk(path) / "queue" / "read_ahead_kb"
    before = int(setting.read_text())
    if kib is None:
        yield before
        return
    try:
        setting.write_text(f"{kib}\n")
    except OSError as exc:
        raise DiskLimitUnavailable(f"cannot set {setting} (root?): {exc}") from None
    try:
        yield kib
    finally:
        setting.write_text(f"{before}\n")


def _home(pid: int) -> Path:
    """The blkio cgroup `pid` is in now."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        if "blkio" in controllers.split(","):
            return BLKIO / group.lstrip("/")
    raise DiskLimitUnavailable(f"process {pid} is in no blkio cgroup (cgroup v2 only?)")


def _reads(group: Path, device: str) -> tuple[int, int]:
    """(bytes, requests) the cgroup has read from `device` so far."""
    counts = []
    for kind in ("io_service_bytes", "io_serviced"):
        lines = (group / f"blkio.throttle.{kind}").read_text().splitlines()
        fields = [line.split() for line in lines]
        counts.append(sum(int(f[2]) for f in fields if f[:2] == [device, "Read"]))
    return counts[0], counts[1]


@contextlib.contextmanager
def limited_disk(
    path: Path, mib_per_s: int, pids: list[int]
) -> Iterator[Callable[[], tuple[int, int]]]:
    """Reads from `path`'s disk by `pids`, and by the processes they start meanwhile, go
    at most `mib_per_s` MiB/s. Yields a function giving the bytes they have read from
    that disk so far, and in how many requests (at the throttle, so readahead counts,
    the page cache does not). Each pid goes back to its own cgroup after."""
    if not (BLKIO / "blkio.throttle.read_bps_device").exists():
        raise DiskLimitUnavailable(f"no cgroup v1 blkio controller at {BLKIO}")
    device = (whole_disk(path) / "dev").read_text().strip()
    homes = {pid: _home(pid) for pid in pids}
    group = BLKIO / f"rj-bench-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        raise DiskLimitUnavailable(f"cannot make a blkio cgroup (root?): {exc}") from None
    try:
        (group / "blkio.throttle.read_bps_device").write_text(f"{device} {mib_per_s << 20}\n")
        try:
            for pid in pids:
                (group / "cgroup.procs").write_text(f"{pid}\n")
            yield lambda: _reads(group, device)
        finally:
            for pid, home in homes.items():
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    (home / "cgroup.procs").write_text(f"{pid}\n")
    finally:
        group.rmdir()  # once empty: the processes started meanwhile have ended
