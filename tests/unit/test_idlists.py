"""Long id lists as JSON, a block at a time, with the event loop's turns between."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from ringjobs import idlists
from ringjobs.api.app import _json_with_ids

SIZES = [0, 1, 7, 8, 15, 50]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idlists, "ID_BLOCK", 8)


@pytest.mark.parametrize("size", SIZES)
async def test_the_text_is_json_dumps_of_the_whole_list(size: int) -> None:
    ids = list(range(10**9, 10**9 + size))
    assert await idlists.json_list(ids) == json.dumps(ids)
    blocks = [b async for b in idlists.json_blocks(ids)]
    assert all(len(json.loads(b)) <= 8 for b in blocks)
    assert await idlists.decoded(blocks) == ids


async def test_the_event_loop_runs_between_blocks() -> None:
    turns = 0

    async def other_request() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    before = turns
    blocks = [b async for b in idlists.json_blocks(list(range(40)))]  # 5 blocks
    encoded = turns - before
    assert await idlists.decoded(blocks) == list(range(40))
    decoded = turns - before - encoded
    other.cancel()
    assert (encoded, decoded) == (4, 4)


@pytest.mark.parametrize("size", SIZES)
async def test_a_prune_answer_is_the_same_text_as_json_response(size: int) -> None:
    answer = {"namespace": "n", "dry_run": False, "run_ids": list(range(size)), "note": "é"}
    response = await _json_with_ids(answer, "run_ids")
    reference = web.json_response(answer)
    assert response.text == reference.text
    assert response.content_type == reference.content_type == "application/json"
    assert response.charset == reference.charset
