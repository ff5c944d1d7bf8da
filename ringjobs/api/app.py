"""The /v1 HTTP API: thin handlers that parse, call the engine or store, and answer."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from ringjobs import __version__
from ringjobs.api.metrics import metrics_handler
from ringjobs.api.openapi import openapi_document
from ringjobs.api.problems import problem_middleware
from ringjobs.engine.engine import Engine
from ringjobs.exceptions import BadRequest, NotFound, StoreUnavailable
from ringjobs.manifest import ManifestSource, apply_overrides, exec_spec, load_manifests
from ringjobs.models import JobSpec, Run, parse_time, utcnow
from ringjobs.store import LogRecord, StoredJob
from ringjobs.store.store import ApplyOutcome
from ringjobs.units import UnitError, parse_duration

MAX_BODY_BYTES = 8 * 1024 * 1024
_MAX_ID_DIGITS = 18  # fits SQLite's 64-bit integers
_MAX_INT = 2**63 - 1
_WAIT_DEFAULT, _WAIT_MAX = 30.0, 300.0
_FOLLOW_POLL = 1.0
_PAGE = 1000

ENGINE_KEY = web.AppKey("engine", Engine)


def create_app(engine: Engine) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=MAX_BODY_BYTES)
    app[ENGINE_KEY] = engine
    routes = [
        web.get("/v1/health", health),
        web.get("/v1/openapi.json", openapi),
        web.post("/v1/apply", apply),
        web.get("/v1/jobs", list_jobs),
        web.get("/v1/jobs/{ns}/{name}", get_job),
        web.delete("/v1/jobs/{ns}/{name}", delete_job),
        web.post("/v1/jobs/{ns}/{name}/runs", start_job_run),
        web.get("/v1/runs", list_runs),
        web.get("/v1/runs/{id}", get_run),
        web.get("/v1/runs/{id}/wait", wait_run),
        web.post("/v1/runs/{id}/cancel", cancel_run),
        web.post("/v1/runs/{id}/rerun", rerun),
        web.post("/v1/exec", exec_run),
        web.get("/v1/runs/{id}/logs", run_logs),
        web.get("/v1/runs/{id}/events", run_events),
        web.get("/v1/namespaces", list_namespaces),
        web.post("/v1/namespaces/{ns}/prune", prune_namespace),
        web.get("/metrics", metrics_handler(engine)),
    ]
    app.add_routes(routes)
    return app


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE_KEY]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def peer_uid(request: web.Request) -> int | None:
    """The caller's uid from SO_PEERCRED on the unix socket."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# -- health and docs ------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    engine = _engine(request)
    docker: dict[str, Any]
    try:
        docker = {"ok": True, "version": await engine.runtime.version()}
    except Exception as exc:  # health reports any failure as data
        docker = {"ok": False, "error": str(exc)}
    try:
        await engine.store.check()
        database = {"ok": True, "path": str(engine.store.path)}
    except StoreUnavailable as exc:
        database = {"ok": False, "path": str(engine.store.path), "error": str(exc)}
    ok = docker["ok"] and database["ok"]
    return _json(
        {
            "status": "ok" if ok else "degraded",
            "version": __version__,
            "docker": docker,
            "database": database,
            "socket": str(engine.config.socket),
            "max_concurrent_runs": engine.config.max_concurrent_runs,
            "active_runs": engine.active_count,
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


# -- apply and jobs -------------------------------------------------------------------


async def apply(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await _body(request)
    sources = _manifest_sources(body)
    # Parsing a large manifest is CPU-bound (PyYAML): keep the event loop free meanwhile.
    loaded = await asyncio.to_thread(
        load_manifests,
        sources,
        engine.config.policy,
        engine.config.defaults,
        skip_workers=_flag_field(body, "skip_workers"),
    )
    namespaces = [{"name": ns.name, "action": "applied"} for ns in loaded.namespaces]
    if _flag_field(body, "dry_run"):
        jobs = [
            {
                "namespace": s.namespace,
                "name": s.name,
                "revision": None,
                "action": "dry_run",
                "run_id": None,
                "spec": s.model_dump(mode="json"),
            }
            for s in loaded.jobs
        ]
        return _json(
            {"dry_run": True, "jobs": jobs, "namespaces": namespaces, "warnings": loaded.warnings}
        )
    outcomes = await engine.apply(loaded, peer_uid(request))
    warnings = list(loaded.warnings) + [w for o in outcomes if (w := _not_started_warning(o))]
    warnings += [w for o in outcomes for w in _inactive_field_warnings(o)]
    jobs = [_outcome_view(o) for o in outcomes]
    return _json({"dry_run": False, "jobs": jobs, "namespaces": namespaces, "warnings": warnings})


def _outcome_view(outcome: ApplyOutcome) -> dict[str, Any]:
    return {
        "namespace": outcome.spec.namespace,
        "name": outcome.spec.name,
        "revision": outcome.revision,
        "action": outcome.action,
        "run_id": outcome.run_id,
        "spec": outcome.spec.model_dump(mode="json"),
    }


def _inactive_field_warnings(outcome: ApplyOutcome) -> list[str]:
    """Fields this version stores but does not act on yet must not fail silently."""
    spec, found = outcome.spec, []
    if spec.schedule:
        found.append(f"schedule {spec.schedule!r} is stored but schedules do not fire yet")
    if spec.parallelism > spec.completions:
        found.append(
            f"parallelism {spec.parallelism} exceeds completions {spec.completions}: "
            f"at most {spec.completions} containers run at once"
        )
    return [f"job {spec.key}: {text}" for text in found] if outcome.action != "unchanged" else []


def _not_started_warning(outcome: ApplyOutcome) -> str | None:
    spec = outcome.spec
    if outcome.action == "unchanged" or outcome.run_id is not None:
        return None
    if spec.schedule or spec.suspend:
        return None
    return (
        f"job {spec.key}: revision {outcome.revision} stored but no run started: a run is "
        "still active and concurrency_policy is Forbid (the active run was not stopped)"
    )


def _manifest_sources(body: dict[str, Any]) -> list[ManifestSource]:
    manifests = body.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise BadRequest('body must have "manifests": [{"source": "...", "content": "..."}]')
    sources = []
    for index, item in enumerate(manifests):
        if not (isinstance(item, dict) and isinstance(item.get("content"), str)):
            raise BadRequest(f'manifests[{index}] must be {{"source": str, "content": str}}')
        sources.append(
            ManifestSource(str(item.get("source") or f"manifest-{index}"), item["content"])
        )
    return sources


async def list_jobs(request: web.Request) -> web.Response:
    engine = _engine(request)
    namespace = request.query.get("namespace") or None
    if namespace is not None:
        await _require_namespace(engine, namespace)
    jobs = await engine.store.list_jobs(namespace)
    return _json({"jobs": [await _job_view(engine, j, with_spec=False) for j in jobs]})


async def get_job(request: web.Request) -> web.Response:
    engine = _engine(request)
    job = await _require_job(engine, request.match_info["ns"], request.match_info["name"])
    return _json(await _job_view(engine, job, with_spec=True))


async def delete_job(request: web.Request) -> web.Response:
    engine = _engine(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    await engine.delete_job(ns, name)
    return _json({"deleted": f"{ns}/{name}"})


async def start_job_run(request: web.Request) -> web.Response:
    engine = _engine(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    customize = _overrides(await _body(request, required=False), engine)
    run = await engine.start_job_run(ns, name, peer_uid(request), customize)
    return _json(run.to_api(), status=201)


async def rerun(request: web.Request) -> web.Response:
    engine = _engine(request)
    source = await _require_run(engine, request.match_info["id"])
    customize = _overrides(await _body(request, required=False), engine)
    run = await engine.rerun(source.id, peer_uid(request), customize)
    return _json(run.to_api(), status=201)


def _overrides(body: dict[str, Any], engine: Engine) -> Callable[[JobSpec], JobSpec]:
    overrides = body.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise BadRequest('"overrides" must be an object: command, env, timeout, backoff_limit')
    defaults = engine.config.defaults
    return lambda spec: apply_overrides(spec, overrides, defaults) if overrides else spec


async def _require_job(engine: Engine, ns: str, name: str) -> StoredJob:
    job = await engine.store.get_job(ns, name)
    if job is None:
        raise NotFound(f"job {ns}/{name} does not exist; `ringjobs job list` shows the jobs")
    return job


async def _require_namespace(engine: Engine, namespace: str) -> None:
    if await engine.store.get_namespace(namespace) is None:
        raise NotFound(
            f"namespace {namespace!r} does not exist; `ringjobs namespace list` shows them"
        )


async def _job_view(engine: Engine, job: StoredJob, with_spec: bool) -> dict[str, Any]:
    last = await engine.store.last_run(job.spec.namespace, job.spec.name)
    view: dict[str, Any] = {
        "namespace": job.spec.namespace,
        "name": job.spec.name,
        "revision": job.revision,
        "schedule": job.spec.schedule,
        "suspend": job.spec.suspend,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "last_run": last.to_api() if last else None,
    }
    if with_spec:
        view["spec"] = job.spec.model_dump(mode="json")
    return view


# -- runs -------------------------------------------------------------------------


async def list_runs(request: web.Request) -> web.Response:
    engine = _engine(request)
    query = request.query
    namespace = query.get("namespace") or None
    if namespace is not None:
        await _require_namespace(engine, namespace)
    runs = await engine.store.list_runs(
        namespace=namespace,
        job=query.get("job") or None,
        status=query.get("status") or None,
        limit=_int_param(query.get("limit"), "limit", 50, 1, 1000),
        before=_int_param(query.get("before"), "before", None, 1, None),
    )
    return _json({"runs": [_run_view(engine, r) for r in runs]})


async def get_run(request: web.Request) -> web.Response:
    engine = _engine(request)
    run = await _require_run(engine, request.match_info["id"])
    view = _run_view(engine, run)
    if run.fans_out:
        view["completions"] = [
            {
                "index": child.completion_index,
                "run_id": child.id,
                "status": child.status,
                "reason": child.reason,
                "exit_code": child.exit_code,
                "attempt": child.attempt,
            }
            for child in await engine.store.child_runs(run.id)
        ]
    return _json(view)


async def wait_run(request: web.Request) -> web.Response:
    engine = _engine(request)
    run_id = (await _require_run(engine, request.match_info["id"])).id  # 400 / 404 first
    timeout = min(
        float(_int_param(request.query.get("timeout"), "timeout", 30, 0, None)), _WAIT_MAX
    )
    deadline = utcnow() + timedelta(seconds=timeout)
    while True:
        token = engine.notifier.token(run_id)
        # Only the status until it is final (each run changes ~8 times while waited on);
        # read after the token: no change missed.
        status = await engine.store.run_status(run_id)
        remaining = (deadline - utcnow()).total_seconds()
        if status is None or status.is_terminal or remaining <= 0:
            return _json((await _require_run(engine, str(run_id))).to_api())
        await engine.notifier.wait(token, min(remaining, _FOLLOW_POLL * 5))


async def exec_run(request: web.Request) -> web.Response:
    """A one-off run like `docker run --rm`, validated as a one-entry manifest."""
    engine = _engine(request)
    body = await _body(request)
    spec = await asyncio.to_thread(exec_spec, body, engine.config.policy, engine.config.defaults)
    run = await engine.exec_run(spec, peer_uid(request))
    return _json(run.to_api(), status=201)


async def cancel_run(request: web.Request) -> web.Response:
    engine = _engine(request)
    run = await _require_run(engine, request.match_info["id"])
    return _json((await engine.cancel(run.id, peer_uid(request))).to_api())


async def run_logs(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    run = await _require_run(engine, request.match_info["id"])
    query = request.query
    stream = query.get("stream") or None
    if stream not in (None, "stdout", "stderr"):
        raise BadRequest(f"stream must be stdout or stderr, not {stream!r}")
    since_us = _since_param(query.get("since"))
    tail = _int_param(query.get("tail"), "tail", None, 0, 1_000_000)
    response = await _ndjson(request)
    if run.fans_out:
        follow = _flag(query.get("follow"))
        await _fan_out_logs(engine, run, response, tail, since_us, stream, follow)
        return response
    after = 0
    if tail is not None:
        records = await engine.store.tail_logs(run.id, tail, since_us, stream)
        await _write_lines(response, [r.to_api() for r in records])
        after = records[-1].seq if records else await engine.store.last_log_seq(run.id)

    async def batches(after_seq: int) -> AsyncIterator[list[LogRecord]]:
        while batch := await engine.store.read_logs(run.id, after_seq, since_us, stream, _PAGE):
            yield batch
            after_seq = batch[-1].seq

    follow = _flag(query.get("follow"))
    while True:
        token = engine.notifier.token(run.id)
        current = await _require_run(engine, str(run.id))
        async for batch in batches(after):
            await _write_lines(response, [r.to_api() for r in batch])
            after = batch[-1].seq
        if not follow or current.status.is_terminal:
            break
        await engine.notifier.wait(token, _FOLLOW_POLL)
    await response.write_eof()
    return response


async def _fan_out_logs(
    engine: Engine,
    run: Run,
    response: web.StreamResponse,
    tail: int | None,
    since_us: int,
    stream: str | None,
    follow: bool,
) -> None:
    """A fan-out run's logs: its completions' lines, each marked with its index."""
    after: dict[int, int] = {}  # child run id -> last seq sent

    def marked(child: Run, records: list[LogRecord]) -> list[dict[str, Any]]:
        return [{**r.to_api(), "completion": child.completion_index} for r in records]

    if tail is not None:
        tails: list[tuple[int, dict[str, Any]]] = []
        for child in await engine.store.child_runs(run.id):
            records = await engine.store.tail_logs(child.id, tail, since_us, stream)
            lines = marked(child, records)
            tails += [(r.time_us, line) for r, line in zip(records, lines, strict=True)]
            after[child.id] = await engine.store.last_log_seq(child.id)
        tails.sort(key=lambda item: item[0])
        await _write_lines(response, [line for _, line in tails[max(0, len(tails) - tail) :]])
    while True:
        token = engine.notifier.token(run.id)
        current = await _require_run(engine, str(run.id))
        for child in await engine.store.child_runs(run.id):
            while batch := await engine.store.read_logs(
                child.id, after.get(child.id, 0), since_us, stream, _PAGE
            ):
                await _write_lines(response, marked(child, batch))
                after[child.id] = batch[-1].seq
        if not follow or current.status.is_terminal:
            break
        await engine.notifier.wait(token, _FOLLOW_POLL)
    await response.write_eof()


async def run_events(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    run = await _require_run(engine, request.match_info["id"])
    follow = _flag(request.query.get("follow"))
    response = await _ndjson(request)
    after = 0
    while True:
        token = engine.notifier.token(run.id)
        current = await _require_run(engine, str(run.id))
        events = await engine.store.list_events(run.id, after)
        await _write_lines(response, [e.to_api() for e in events])
        after = events[-1].id if events else after
        if not follow or (current.status.is_terminal and not events):
            break
        await engine.notifier.wait(token, _FOLLOW_POLL)
    await response.write_eof()
    return response


def _run_view(engine: Engine, run: Run) -> dict[str, Any]:
    """A run as the API shows it; pending runs also say where they are in the queue."""
    view = run.to_api()
    view["queue_position"] = engine.queue_position(run.id)
    return view


async def _require_run(engine: Engine, raw_id: str) -> Run:
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= _MAX_ID_DIGITS):
        raise BadRequest(f"run id must be a whole number, not {raw_id!r}")
    run = await engine.store.get_run(int(raw_id))
    if run is None:
        raise NotFound(f"run {raw_id} does not exist (pruned, or never created)")
    return run


# -- namespaces -----------------------------------------------------------------------


async def list_namespaces(request: web.Request) -> web.Response:
    rows = await _engine(request).store.list_namespaces()
    for row in rows:
        row["environment"] = {k: _redact(v) for k, v in row["environment"].items()}
    return _json({"namespaces": rows})


async def prune_namespace(request: web.Request) -> web.Response:
    engine = _engine(request)
    namespace = request.match_info["ns"]
    await _require_namespace(engine, namespace)
    body = await _body(request, required=False)
    older_than = _older_than(body.get("older_than"))
    result = await engine.prune(
        namespace, _flag_field(body, "all"), _flag_field(body, "dry_run"), older_than
    )
    return _json(
        {
            "namespace": namespace,
            "dry_run": result.dry_run,
            "run_ids": result.run_ids,
            "runs_removed": 0 if result.dry_run else len(result.run_ids),
            "log_lines_removed": result.log_lines_removed,
            "events_removed": result.events_removed,
            "containers_removed": result.containers_removed,
            "cancelled": result.cancelled,
        }
    )


def _older_than(raw: object) -> datetime | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise BadRequest('older_than must be a duration string such as "30d" or "12h"')
    try:
        return utcnow() - timedelta(seconds=parse_duration(raw))
    except (UnitError, OverflowError, ValueError) as exc:
        raise BadRequest(f"older_than: {exc}") from None


def _redact(value: Any) -> Any:
    if isinstance(value, dict) and "secretRef" in value:
        return f"<secret {value['secretRef']}>"
    return value


# -- helpers --------------------------------------------------------------------------


async def _body(request: web.Request, required: bool = True) -> dict[str, Any]:
    if not request.can_read_body:
        if required:
            raise BadRequest("a JSON body is required")
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _int_param(raw: str | None, name: str, default: int | None, low: int, high: int | None) -> Any:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {raw!r}") from None
    high = _MAX_INT if high is None else high
    if value < low or value > high:
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be {bounds}, not {value}")
    return value


def _since_param(raw: str | None) -> int:
    if not raw:
        return 0
    try:
        when = utcnow() - timedelta(seconds=parse_duration(raw))
    except (UnitError, OverflowError, ValueError):
        try:
            when = parse_time(raw)
        except (ValueError, OverflowError):
            raise BadRequest(
                f"since must be a duration (10m, 1h) or an RFC 3339 time, not {raw!r}"
            ) from None
    return int(when.timestamp() * 1_000_000)


def _flag_field(body: dict[str, Any], key: str) -> bool:
    """A JSON boolean; "false" as a string must never mean true."""
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false (a JSON boolean), not {value!r}")
    return value


def _flag(raw: str | None) -> bool:
    return (raw or "").lower() in ("1", "true", "yes")


async def _ndjson(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def _write_lines(response: web.StreamResponse, items: list[dict[str, Any]]) -> None:
    if items:
        await response.write("".join(json.dumps(i) + "\n" for i in items).encode())
