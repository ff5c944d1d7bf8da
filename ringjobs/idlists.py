"""Long lists of run ids as JSON, a block at a time (a prune handles 100,000).

One json.dumps or json.loads of 100,000 ints holds the GIL, and so the event loop,
15-25 ms on a 2-vCPU host. In blocks of ID_BLOCK (~2 ms each), other requests get a
turn between them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence

ID_BLOCK = 8192


async def json_blocks(ids: Sequence[int]) -> AsyncIterator[str]:
    """`ids` as JSON arrays of at most ID_BLOCK ids each, in order."""
    for start in range(0, len(ids), ID_BLOCK):
        if start:
            await asyncio.sleep(0)
        yield json.dumps(list(ids[start : start + ID_BLOCK]))


async def json_list(ids: Sequence[int]) -> str:
    """json.dumps(list(ids)), the same text, encoded a block at a time."""
    blocks = [block[1:-1] async for block in json_blocks(ids)]
    return "[" + ", ".join(blocks) + "]"


async def decoded(arrays: Iterable[str]) -> list[int]:
    """The ids of JSON arrays (each of at most ID_BLOCK ids), one after the other."""
    ids: list[int] = []
    for number, array in enumerate(arrays):
        if number:
            await asyncio.sleep(0)
        ids += json.loads(array)
    return ids
