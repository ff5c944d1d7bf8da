"""A disk as slow as a VPS's, for a benchmark's reads: a cgroup v1 blkio throttle.

This VM's disk is cached by its host and reads at 0.8-3 GiB/s, faster than a small VPS's
block storage (AWS gp3 volumes start at 125 MiB/s and go to 1,000). A reader of a file
that keeps up with such a disk is "at disk speed" when the disk is the limit; here that
is only seen with the disk held to a VPS's rate. Its readahead, too, is this VM's own
(8 MiB), not the kernel's default (128 KiB: VM_READAHEAD_PAGES), which a disk has unless
its driver or the system sets another. Needs root and cgroup v1's blkio controller
(cgroup v2's io.max is not handled: not available to test here).

Both are put back on the way out, on an exception and on SIGTERM (the benchmark turns
it into SystemExit); a benchmark killed with SIGKILL leaves them: `stale_groups_removed`
takes away the cgroups of benchmarks no longer running, and the readahead is set back
by hand (`/sys/block/DISK/queue/read_ahead_kb`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

BLKIO = Path("/sys/fs/cgroup/blkio")
KERNEL_READAHEAD_KIB = 128  # VM_READAHEAD_PAGES
_GROUP_PREFIX = "rj-bench-"


class DiskLimitUnavailable(Exception):
    """The disk cannot be limited here; the message says why and what would do it."""


def whole_disk(path: Path) -> Path:
    """The sysfs directory of the disk that holds `path` (blkio throttles whole disks
    only, and readahead is the disk's): its `dev` file holds MAJ:MIN."""
    dev = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not node.exists():
        raise DiskLimitUnavailable(
            f"{path} is not on a block device (tmpfs or overlay?): set TMPDIR to a "
            "directory on a disk"
        )
    if (node / "partition").exists():  # a partition: its disk is the parent directory
        node = node.resolve().parent
    return node


def _readahead_setting(path: Path) -> Path:
    return whole_disk(path) / "queue" / "read_ahead_kb"


def check_available(path: Path) -> int:
    """Raise DiskLimitUnavailable unless `path`'s disk can be limited and its readahead
    set here (before minutes of work that would be wasted); the disk's readahead in KiB."""
    if not (BLKIO / "blkio.throttle.read_bps_device").exists():
        raise DiskLimitUnavailable(
            f"no cgroup v1 blkio controller at {BLKIO} (a cgroup v2 host: its io.max is "
            "not handled by this benchmark)"
        )
    setting = _readahead_setting(path)
    if not os.access(BLKIO, os.W_OK) or not os.access(setting, os.W_OK):
        raise DiskLimitUnavailable(f"cannot write {BLKIO} or {setting}: run it as root")
    return int(setting.read_text())


def stale_groups_removed() -> list[str]:
    """Remove the cgroups left by benchmarks that were killed (their pid is gone),
    moving what is left in them to the root; their names."""
    removed = []
    for group in BLKIO.glob(_GROUP_PREFIX + "*"):
        owner = group.name.removeprefix(_GROUP_PREFIX)
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _empty(group)
            group.rmdir()
            removed.append(group.name)
    return removed


@contextlib.contextmanager
def readahead(path: Path, kib: int) -> Iterator[None]:
    """The readahead of `path`'s disk set to `kib` KiB meanwhile, then set back. A file
    keeps the readahead in force when it was opened: open the files to measure inside."""
    setting = _readahead_setting(path)
    before = int(setting.read_text())
    _write(setting, f"{kib}\n")
    try:
        yield
    finally:
        setting.write_text(f"{before}\n")


def blkio_cgroup_of(pid: int) -> Path:
    """The blkio cgroup `pid` is in now."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        if "blkio" in controllers.split(","):
            return BLKIO / group.lstrip("/")
    raise DiskLimitUnavailable(f"process {pid} is in no blkio cgroup (a cgroup v2 host?)")


def _reads(group: Path, device: str) -> tuple[int, int]:
    """(bytes, bios) the cgroup has read from `device` so far, as its throttle counts
    them: bios as submitted, before the block layer merges or splits them."""
    counts = []
    for kind in ("io_service_bytes", "io_serviced"):
        lines = (group / f"blkio.throttle.{kind}").read_text().splitlines()
        fields = [line.split() for line in lines]
        counts.append(sum(int(f[2]) for f in fields if f[:2] == [device, "Read"]))
    return counts[0], counts[1]


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise DiskLimitUnavailable(f"cannot write {text.strip()!r} to {path}: {exc}") from None


def _empty(group: Path) -> None:
    """Move whatever is still in `group` (a child still exiting) to its parent."""
    for pid in (group / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            (group.parent / "cgroup.procs").write_text(f"{pid}\n")


@contextlib.contextmanager
def limited_disk(
    path: Path, mib_per_s: int, pids: list[int]
) -> Iterator[Callable[[], tuple[int, int]]]:
    """Reads from `path`'s disk by `pids`, and by the processes they start meanwhile, go
    at most `mib_per_s` MiB/s. Yields a function giving the bytes they have read from
    that disk so far, and in how many bios (at the throttle, so readahead counts, the
    page cache does not). Each pid goes back to its own cgroup after."""
    device = (whole_disk(path) / "dev").read_text().strip()
    homes = {pid: blkio_cgroup_of(pid) for pid in pids}
    group = BLKIO / f"{_GROUP_PREFIX}{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        raise DiskLimitUnavailable(f"cannot make the cgroup {group}: {exc}") from None
    try:
        _write(group / "blkio.throttle.read_bps_device", f"{device} {mib_per_s << 20}\n")
        try:
            for pid in pids:
                _write(group / "cgroup.procs", f"{pid}\n")
            yield lambda: _reads(group, device)
        finally:
            for pid, home in homes.items():
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    (home / "cgroup.procs").write_text(f"{pid}\n")
    finally:
        _empty(group)
        group.rmdir()
