"""A unix-socket proxy in front of dockerd, run as a subprocess by the tests.

Killing it looks to ringjobs exactly like the engine going away (connections drop,
new ones are refused) while the containers keep running behind it.

`docker_proxy.py SOCKET [HOLD_FILE]`: while HOLD_FILE exists, a request to start a
container is held, never sent to dockerd, and dropped when its client goes away.
That freezes a run between "container created" and "container started".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys

ENGINE = "/var/run/docker.sock"
_START = re.compile(rb"^POST /[^ ]*containers/[0-9a-f]+/start[ ?]", re.MULTILINE)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: str | None = None
) -> None:
    try:
        while data := await reader.read(65536):
            if hold and _START.search(data) and os.path.exists(hold):  # noqa: ASYNC240
                while await reader.read(65536):  # held until the client disconnects
                    pass
                break
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _handle(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, hold: str | None
) -> None:
    engine_r, engine_w = await asyncio.open_unix_connection(ENGINE)
    await asyncio.gather(_pipe(client_r, engine_w, hold), _pipe(engine_r, client_w))


async def _serve(path: str, hold: str | None) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(lambda r, w: _handle(r, w, hold), path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
