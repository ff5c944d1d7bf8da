"""The daemon's lifecycle: lock, config, store, runtime, engine, socket, signals.

startup -> serve -> shutdown, in that order. On SIGTERM or SIGINT it stops
accepting requests, stops starting runs, saves logs and state, and leaves
containers running; the next start reattaches to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import grp
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

from ringjobs.api.app import create_app
from ringjobs.api.connections import ConnectionGuard, GuardedUnixSite
from ringjobs.config import Config
from ringjobs.engine.engine import Engine
from ringjobs.engine.scheduler import Scheduler
from ringjobs.exceptions import ConfigError, DaemonAlreadyRunning, RingjobsError
from ringjobs.logs import configure_logging
from ringjobs.runtime.docker import DockerRuntime
from ringjobs.secrets import load_secret_box
from ringjobs.store import Store

log = structlog.get_logger(__name__)

# In-flight requests get this long on SIGTERM; waits and follows are long-lived by design
# and their clients reconnect, so a short grace keeps stops quick.
_SHUTDOWN_TIMEOUT = 1.0


class SocketLock:
    """An flock next to a file (the socket, the database), held for the daemon's life."""

    def __init__(self, socket_path: Path, directory_mode: int = 0o777) -> None:
        self.path = socket_path.with_name(socket_path.name + ".lock")
        self.directory_mode = directory_mode  # of the directory if this creates it (umask applies)
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=self.directory_mode, parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise DaemonAlreadyRunning(
                f"a ringjobs daemon is already running (pid {owner}) with "
                f"{self.path.with_suffix('')}; stop it first, or give this one another "
                "--socket and --database"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def raise_open_file_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit: every client, follow and run holds fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. an infinite hard limit on some kernels
            log.warning("nofile_limit_not_raised", soft=soft, hard=hard, error=str(exc))
            return soft, hard
    new_soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.info("nofile_limit", soft_was=soft, soft=new_soft, hard=hard)
    return new_soft, hard


def _socket_is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class Daemon:
    """Owns every long-lived resource of the daemon process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = SocketLock(config.socket)
        # Two daemons, one history: never. Its directory holds logs and secrets: 0700.
        self.database_lock = SocketLock(config.database, directory_mode=0o700)
        self.store = Store(config.database)
        self.runtime: DockerRuntime | None = None
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        self.runner: web.AppRunner | None = None
        self.stopping = asyncio.Event()

    async def serve(self) -> None:
        await self.startup()
        try:
            await self.stopping.wait()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        raise_open_file_limit()
        self.lock.acquire()
        self.database_lock.acquire()
        self._claim_socket_path()
        box = load_secret_box(self.config.secrets.key_path(self.config.database))
        await self.store.open()
        self.runtime = DockerRuntime(self.config.docker_host, self.config.max_concurrent_runs)
        self.engine = Engine(self.store, self.runtime, self.config, box)
        await self.engine.start()
        self.scheduler = Scheduler(self.engine)
        await self.scheduler.start()
        await self.listen(create_app(self.engine))
        self._secure_socket()
        self._install_signal_handlers()
        # What start-up made (modules, the stack's objects) mostly lives as long as the
        # daemon: frozen, a full collection skips it. With an apply every 50 ms, the one
        # full collection of a 30 s run held the event loop 77 ms; frozen, 0.6 ms. What
        # of it dies later is still freed by its count, unless it is in a cycle (a leak
        # bounded by what one start-up made).
        gc.collect()
        gc.freeze()
        log.info(
            "daemon_started",
            socket=str(self.config.socket),
            database=str(self.config.database),
            pid=os.getpid(),
        )

    async def listen(self, app: web.Application) -> ConnectionGuard:
        """Serve `app` on the socket, every connection through the limits' guard."""
        limits = self.config.limits
        self.runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            keepalive_timeout=limits.header_timeout_seconds,  # idle between requests, too
        )
        await self.runner.setup()
        guard = ConnectionGuard(limits.max_connections, limits.header_timeout_seconds)
        # Born 0660: between bind and chmod the socket already accepts connections, and
        # asyncio yields to the loop there (a client could see the umask's mode).
        umask = os.umask(0o117)
        try:
            await GuardedUnixSite(self.runner, str(self.config.socket), guard).start()
        finally:
            os.umask(umask)
        return guard

    def _claim_socket_path(self) -> None:
        path = self.config.socket
        if path.exists() or path.is_symlink():
            if _socket_is_live(path):
                raise DaemonAlreadyRunning(f"a daemon already answers on {path}")
            path.unlink()  # stale: left by a daemon that died
        path.parent.mkdir(parents=True, exist_ok=True)

    def _secure_socket(self) -> None:
        path = self.config.socket
        os.chmod(path, 0o660)
        if self.config.socket_group:
            try:
                gid = grp.getgrnam(self.config.socket_group).gr_gid
            except KeyError:
                raise ConfigError(
                    f"socket_group {self.config.socket_group!r} does not exist; create it "
                    "or change socket_group in the config"
                ) from None
            os.chown(path, -1, gid)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    async def shutdown(self) -> None:
        """Each step runs even if an earlier one failed: state first, then the socket."""
        log.info("daemon_stopping")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if self.engine is not None:
            self.engine.stop_starting()  # not even during the grace of in-flight requests
        steps = [
            self.runner.cleanup if self.runner else None,  # stop accepting requests
            self.scheduler.stop if self.scheduler else None,  # stop firing
            self.engine.stop if self.engine else None,  # stop starting runs, flush logs
            self.store.close,
            self.runtime.close if self.runtime else None,
        ]
        for step in steps:
            if step is not None:
                try:
                    await step()
                except Exception:
                    log.exception("shutdown_step_failed", step=getattr(step, "__qualname__", ""))
        with contextlib.suppress(FileNotFoundError):
            self.config.socket.unlink()
        self.database_lock.release()
        self.lock.release()
        log.info("daemon_stopped")


def serve(config: Config) -> int:
    """Run the daemon until it is stopped; returns the process exit code. `ringjobs
    daemon` comes here through ringjobs.launch, which reads the config first."""
    configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(Daemon(config).serve())
    except RingjobsError as exc:
        log.error("daemon_failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
