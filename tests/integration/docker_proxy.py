"""A unix-socket proxy in front of dockerd, run as a subprocess by the tests.

Killing it looks to ringjobs exactly like the engine going away (connections drop,
new ones are refused) while the containers keep running behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

ENGINE = "/var/run/docker.sock"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    engine_r, engine_w = await asyncio.open_unix_connection(ENGINE)
    await asyncio.gather(_pipe(client_r, engine_w), _pipe(engine_r, client_w))


async def _serve(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(_handle, path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
