"""The API fuzzed from its own /v1/openapi.json: no 500, no hang, every error problem+json."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from api_server import ApiServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from ringjobs.api.openapi import openapi_document

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
# Negative data needs something to corrupt: a parameter or a body.
CASES = [
    (op, mode)
    for op in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or op.body or list(op.iter_parameters())
]
SEED_MANIFEST = "deployments: {j: {name: j, namespace: fuzz, image: fuzz:1}}"
_REQUEST_TIMEOUT = 20.0  # far above any answer here; reaching it means a hang


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    folder = Path(tempfile.mkdtemp(prefix="rjf", dir="/tmp"))
    limits = {"request_timeout": "10s"}
    try:
        with ApiServer(folder, tcp=True, limits=limits) as api:
            body = {"manifests": [{"source": "m.yaml", "content": SEED_MANIFEST}]}
            answer = requests.post(f"{api.url}/v1/apply", json=body, timeout=_REQUEST_TIMEOUT)
            assert answer.status_code == 200, answer.text  # runs 1.. exist for ids to hit
            yield api
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_answer(status: int, kind: str, text: str, what: str) -> None:
    assert status < 500, f"{what}: {text}"
    kind = kind.split(";")[0]
    if status >= 400:
        assert kind == "application/problem+json", (what, status, kind, text[:200])
        problem = json.loads(text)
        assert problem["status"] == status and problem["title"] and problem["detail"]
        assert problem["type"].startswith("urn:ringjobs:problem:")
    elif kind == "application/x-ndjson":
        for line in text.splitlines():
            json.loads(line)
    elif kind == "application/json":
        json.loads(text)


@pytest.mark.parametrize(
    ("operation", "mode"), CASES, ids=[f"{op.label}-{mode.value}" for op, mode in CASES]
)
def test_operation(server: ApiServer, operation: object, mode: GenerationMode) -> None:
    strategy = operation.as_strategy(generation_mode=mode)  # type: ignore[attr-defined]

    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.url, timeout=_REQUEST_TIMEOUT)
        kind = (response.headers.get("content-type") or [""])[0]
        what = f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
        check_answer(response.status_code, kind, response.text, what)

    fuzz()


_RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
        max_leaves=8,
    ).map(lambda v: json.dumps(v).encode()),
)
_MUTATIONS = [
    ("POST", "/v1/apply"),
    ("POST", "/v1/exec"),
    ("POST", "/v1/jobs/fuzz/j/runs"),
    ("POST", "/v1/runs/1/rerun"),
    ("POST", "/v1/namespaces/fuzz/prune"),
]


@settings(max_examples=150, deadline=None, database=None)
@given(target=st.sampled_from(_MUTATIONS), body=_RAW_BODIES)
def test_raw_bodies_on_every_mutation(
    server: ApiServer, target: tuple[str, str], body: bytes
) -> None:
    method, path = target
    response = requests.request(
        method,
        f"{server.url}{path}",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=_REQUEST_TIMEOUT,
    )
    what = f"{method} {path} {body!r:.200}"
    check_answer(
        response.status_code, response.headers.get("Content-Type", ""), response.text, what
    )
