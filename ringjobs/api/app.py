"""The /v1 HTTP API: thin handlers that parse, call the engine or store, and answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

import structlog
from aiohttp import web

from ringjobs import __version__
from ringjobs.api.access import (
    AUDIT_KEY,
    StreamAborted,
    StreamSlots,
    access_middleware,
    caller_of,
    timeout_middleware,
)
from ringjobs.api.logpump import LogPump, log_pump
from ringjobs.api.metrics import metrics_handler
from ringjobs.api.openapi import openapi_document
from ringjobs.api.problems import problem_middleware
from ringjobs.api.secrets import secret_routes
from ringjobs.engine.engine import Engine
from ringjobs.engine.scheduler import schedule_rows
from ringjobs.exceptions import BadRequest, Conflict, NotFound, PayloadTooLarge, StoreUnavailable
from ringjobs.idlists import json_list
from ringjobs.manifest import ManifestSource, apply_overrides, exec_spec, load_manifests
from ringjobs.mediatypes import LOG_FRAMES, NDJSON
from ringjobs.models import JobSpec, Run, RunStatus, parse_time, utcnow
from ringjobs.store import StoredJob
from ringjobs.store.schedules import ScheduleStore
from ringjobs.store.store import ApplyOutcome, LogPage, LogPageReader, RequestAudit
from ringjobs.units import UnitError, parse_duration

_MAX_ID_DIGITS = 18  # fits SQLite's 64-bit integers
_MAX_INT = 2**63 - 1
_WAIT_DEFAULT, _WAIT_MAX = 30.0, 300.0
_FOLLOW_POLL = 1.0
_STREAM_SOCKET_BUFFER = 1 << 20  # bytes; see _stream

log = structlog.get_logger(__name__)
ENGINE_KEY = web.AppKey("engine", Engine)
STREAMS_KEY = web.AppKey("streams", StreamSlots)


def create_app(engine: Engine) -> web.Application:
    config = engine.config
    middlewares = [
        problem_middleware,
        timeout_middleware(config),
        access_middleware(config, engine.store),
    ]
    app = web.Application(middlewares=middlewares, client_max_size=config.limits.max_request_size)
    app[ENGINE_KEY] = engine
    app[STREAMS_KEY] = StreamSlots(config)
    app.on_cleanup.append(_close_streams)
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
        # No HEAD: its answer has no body, and a stream's bytes are written past aiohttp.
        web.get("/v1/runs/{id}/logs", run_logs, allow_head=False),
        web.get("/v1/runs/{id}/events", run_events, allow_head=False),
        web.get("/v1/namespaces", list_namespaces),
        web.post("/v1/namespaces/{ns}/prune", prune_namespace),
        *secret_routes(),
        web.get("/v1/schedules", list_schedules),
        web.post("/v1/jobs/{ns}/{name}/suspend", suspend_job),
        web.post("/v1/jobs/{ns}/{name}/resume", resume_job),
        web.get("/v1/jobs/{ns}/{name}/fires", list_fires),
        web.get("/v1/audit", list_audit),
        web.get("/metrics", metrics_handler(engine)),
    ]
    app.add_routes(routes)
    return app


async def _close_streams(app: web.Application) -> None:
    app[STREAMS_KEY].close()


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE_KEY]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _audit(request: web.Request, status: int, **data: Any) -> RequestAudit | None:
    """The request's audit record, to be stored with the runs it creates (see access),
    with the `status` and summary `data` its answer will have."""
    audit = request.get(AUDIT_KEY)
    if audit is not None:
        audit.status, audit.data = status, data
    return audit


def peer_uid(request: web.Request) -> int | None:
    """The caller's uid from SO_PEERCRED on the unix socket."""
    caller = caller_of(request)
    return caller.uid if caller else None


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
    limit = engine.config.limits.max_jobs_per_apply
    if len(loaded.jobs) > limit:
        raise PayloadTooLarge(
            f"this apply defines {len(loaded.jobs)} jobs, over limits.max_jobs_per_apply "
            f"({limit}); apply them in several smaller batches"
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
    outcomes = await engine.apply(loaded, peer_uid(request), _audit(request, 200, dry_run=False))
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
    run = await engine.start_job_run(ns, name, peer_uid(request), customize, _audit(request, 201))
    return _json(run.to_api(), status=201)


async def rerun(request: web.Request) -> web.Response:
    engine = _engine(request)
    source = await _require_run(engine, request.match_info["id"])
    customize = _overrides(await _body(request, required=False), engine)
    run = await engine.rerun(source.id, peer_uid(request), customize, _audit(request, 201))
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

    sources = await engine.store.run_sources(run.id)  # live source of each attempt, if any
    view["source"] = sources[-1] if sources else None
    return _json(view)


async def wait_run(request: web.Request) -> web.Response:
    engine = _engine(request)
    run_id = (await _require_run(engine, request.match_info["id"])).id  # 400 / 404 first
    timeout = min(
        float(_int_param(request.query.get("timeout"), "timeout", 30, 0, None)), _WAIT_MAX
    )
    deadline = utcnow() + timedelta(seconds=timeout)
    async with request.app[STREAMS_KEY].slot():  # up to _WAIT_MAX s: a slot like a follow
        while True:
            token = engine.notifier.token(run_id)
            # Only the status until it is final (each run changes ~8 times while waited
            # on); read after the token: no change missed.
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
    run = await engine.exec_run(spec, peer_uid(request), _audit(request, 201))
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
    framed = _quality(request, LOG_FRAMES) > max(_quality(request, NDJSON), 0.0)
    form = _LogForm(framed, framed and _flag(query.get("timestamps")))
    slots = request.app[STREAMS_KEY]
    async with slots.slot():
        response = await _stream(request, LOG_FRAMES if framed else NDJSON)
        async with _after_headers(request):
            async with log_pump(request, engine.store, slots.threads, slots.write_timeout) as pump:
                await _follow_logs(request, pump, run, tail, since_us, stream, form)
            await _end_stream(response)
        return response


class _LogForm(NamedTuple):
    """NDJSON records, or log frames (docs/api.md), with the time before each line."""

    framed: bool
    timestamps: bool


def _quality(request: web.Request, media_type: str) -> float:
    """The q the Accept headers give this media type by name (wildcards aside); -1 if
    they do not name it. Frames are sent only to a client that asks for them."""
    best = -1.0
    for header in request.headers.getall("Accept", []):
        for item in header.split(","):
            name, *params = (part.strip() for part in item.split(";"))
            if name.lower() != media_type:
                continue
            quality = 1.0
            for param in params:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(value.strip())
                    except ValueError:
                        quality = 0.0
            best = max(best, quality)
    return best


async def _follow_logs(
    request: web.Request,
    pump: LogPump,
    run: Run,
    tail: int | None,
    since_us: int,
    stream: str | None,
    form: _LogForm,
) -> None:
    """A run's lines; a fan-out run's are its completions', each marked with its index.

    `tail` applies to each completion (as `kubectl logs --tail` does to each pod), and a
    tail is paged like the rest: never held in memory at once.
    """
    engine = _engine(request)
    follow = _flag(request.query.get("follow"))
    after: dict[int, int] = {}  # run id -> last seq sent
    first = True
    while True:
        token = engine.notifier.token(run.id)
        current = await _require_run(engine, str(run.id))
        sources = await engine.store.child_runs(run.id) if run.fans_out else [current]
        for source in sources:
            if source.id not in after:  # a completion started later is read from its start
                after[source.id] = await _start_seq(
                    engine, source.id, tail if first else None, since_us, stream
                )
            completion = source.completion_index if run.fans_out else None
            start = after[source.id]
            pages = partial(_log_pages, source.id, start, since_us, stream, completion, form)
            after[source.id] = await pump.send(pages, start)
        first = False
        if not follow or current.status.is_terminal:
            return
        await engine.notifier.wait(token, _FOLLOW_POLL)


def _log_pages(
    run_id: int,
    after: int,
    since_us: int,
    stream: str | None,
    completion: int | None,
    form: _LogForm,
    reader: LogPageReader,
) -> Iterator[LogPage]:
    """A run's stored lines after seq `after`, as `form` says (read on the pump's thread)."""
    return reader.pages(run_id, after, since_us, stream, completion, form.framed, form.timestamps)


async def _start_seq(
    engine: Engine, run_id: int, tail: int | None, since_us: int, stream: str | None
) -> int:
    """The seq after which a run's lines are sent: 0, or where its last `tail` begin."""
    if tail is None:
        return 0
    start = await engine.store.tail_start_seq(run_id, tail, since_us, stream)
    return start - 1 if start else await engine.store.last_log_seq(run_id)


async def run_events(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    run = await _require_run(engine, request.match_info["id"])
    follow = _flag(request.query.get("follow"))
    async with request.app[STREAMS_KEY].slot():
        response = await _stream(request, NDJSON)
        async with _after_headers(request):
            after = 0
            while True:
                token = engine.notifier.token(run.id)
                current = await _require_run(engine, str(run.id))
                events = await engine.store.list_events(run.id, after)
                await _write_lines(request, response, [e.to_api() for e in events])
                after = events[-1].id if events else after
                if not follow or (current.status.is_terminal and not events):
                    break
                await engine.notifier.wait(token, _FOLLOW_POLL)
            await _end_stream(response)
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
    store = _engine(request).store
    rows, secrets = await store.list_namespaces(), await store.secret_counts()
    for row in rows:
        row["environment"] = {k: _redact(v) for k, v in row["environment"].items()}
        row["secrets"] = secrets.get(row["name"], 0)
    return _json({"namespaces": rows})


async def prune_namespace(request: web.Request) -> web.Response:
    engine = _engine(request)
    namespace = request.match_info["ns"]
    await _require_namespace(engine, namespace)
    body = await _body(request, required=False)
    older_than = _older_than(body.get("older_than"))
    include_active = _flag_field(body, "all")
    result = await engine.prune(
        namespace,
        include_active,
        _flag_field(body, "dry_run"),
        older_than,
        keep_last=_keep_last(body.get("keep_last")),
        statuses=_prune_statuses(body.get("status"), include_active),
    )
    answer = {
        "namespace": namespace,
        "dry_run": result.dry_run,
        "run_ids": result.run_ids,
        "runs_removed": 0 if result.dry_run else len(result.run_ids),
        "log_lines_removed": result.log_lines_removed,
        "events_removed": result.events_removed,
        "containers_removed": result.containers_removed,
        "cancelled": result.cancelled,
    }
    return await _json_with_ids(answer, "run_ids")


async def _json_with_ids(data: dict[str, Any], key: str) -> web.Response:
    """_json(data), the same text, with data[key] (a list of ids: a prune's can be
    100,000) encoded a block at a time between turns of the event loop."""
    ids = await json_list(data[key])
    fields = (f"{json.dumps(k)}: {ids if k == key else json.dumps(v)}" for k, v in data.items())
    return web.Response(text="{" + ", ".join(fields) + "}", content_type="application/json")


async def list_audit(request: web.Request) -> web.Response:
    """Who changed what (apply, run, cancel, delete, prune...), with uid and pid."""
    query = request.query
    events = await _engine(request).store.list_audit_events(
        run_id=_int_param(query.get("run"), "run", None, 1, None),
        before=_int_param(query.get("before"), "before", None, 1, None),
        limit=_int_param(query.get("limit"), "limit", 100, 1, 1000),
    )
    return _json({"events": events})


def _older_than(raw: object) -> datetime | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise BadRequest('older_than must be a duration string such as "30d" or "12h"')
    try:
        return utcnow() - timedelta(seconds=parse_duration(raw))
    except (UnitError, OverflowError, ValueError) as exc:
        raise BadRequest(f"older_than: {exc}") from None


def _keep_last(raw: object) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= _MAX_INT:
        raise BadRequest(f"keep_last must be a whole number of runs per job, not {raw!r}")
    return raw


def _prune_statuses(raw: object, include_active: bool) -> list[str] | None:
    """`status`: one status or a list; active ones only with `all` (they are cancelled)."""
    if raw is None or raw == [] or raw == "":
        return None
    values = [raw] if isinstance(raw, str) else raw
    known = [str(s) for s in RunStatus]
    if not isinstance(values, list) or not all(v in known for v in values):
        raise BadRequest(f"status must be one or more of {', '.join(known)}, not {raw!r}")
    active = [v for v in values if not RunStatus(v).is_terminal]
    if active and not include_active:
        raise BadRequest(
            f"status {', '.join(active)} names active runs: add all (--all) to cancel and "
            "remove them, or prune only completed, failed or cancelled runs"
        )
    return [str(v) for v in values]


# -- schedules ------------------------------------------------------------------------


async def list_schedules(request: web.Request) -> web.Response:
    engine = _engine(request)
    namespace = request.query.get("namespace") or None
    if namespace is not None:
        await _require_namespace(engine, namespace)
    return _json({"schedules": await schedule_rows(engine.store, namespace)})


async def suspend_job(request: web.Request) -> web.Response:
    return await _set_suspended(request, True)


async def resume_job(request: web.Request) -> web.Response:
    return await _set_suspended(request, False)


async def _set_suspended(request: web.Request, suspended: bool) -> web.Response:
    """`job suspend|resume`: stop or restart schedule fires; runs and history stay."""
    engine = _engine(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    spec = (await _require_job(engine, ns, name)).spec
    if not spec.schedule:
        raise Conflict(
            f"job {ns}/{name} has no schedule; suspend and resume only stop and restart "
            "schedule fires (a job without one runs only on apply or `job run`)"
        )
    if not suspended and spec.suspend:
        raise Conflict(
            f"job {ns}/{name} is suspended by its manifest (suspend: true); set "
            "suspend: false in the manifest and apply it to resume"
        )
    await ScheduleStore(engine.store).set_suspended(ns, name, suspended)
    engine.jobs_changed.note([(ns, name)])
    rows = await schedule_rows(engine.store, ns)
    return _json(next(row for row in rows if row["job"] == name))


async def list_fires(request: web.Request) -> web.Response:
    engine = _engine(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    await _require_job(engine, ns, name)
    limit = _int_param(request.query.get("limit"), "limit", 20, 1, 100)
    fires = await ScheduleStore(engine.store).fires(ns, name, limit)
    return _json({"fires": [f.to_api() for f in fires]})


def _redact(value: Any) -> Any:
    if isinstance(value, dict):  # a secret reference: stored as secret_ref, written secretRef
        return f"<secret {value.get('secretRef', value.get('secret_ref'))}>"
    return value


# -- helpers --------------------------------------------------------------------------


async def _body(request: web.Request, required: bool = True) -> dict[str, Any]:
    if not request.body_exists:  # the timeout middleware has read (and cached) it
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


async def _stream(request: web.Request, content_type: str) -> web.StreamResponse:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        # The reader and the daemon take turns less often (on 2 cores, a context switch
        # each): `logs RUN` of 256 MiB went 165-186 -> 212-298 MiB/s. The kernel caps
        # it at net.core.wmem_max; it is memory only while the reader lags. Optional:
        # a socket that refuses it streams all the same.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _STREAM_SOCKET_BUFFER)
    response = web.StreamResponse(headers={"Content-Type": content_type, "Vary": "Accept"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


@asynccontextmanager
async def _after_headers(request: web.Request) -> AsyncIterator[None]:
    """A stream once its headers are out. A client that left ends it quietly. An error
    can no longer be answered as a problem (it would land inside the body): it is
    logged and the connection dropped, and the client says the answer was cut short."""
    try:
        yield
    except StreamAborted:
        pass
    except Exception:
        log.exception("stream_failed", path=request.path, method=request.method)
        if request.transport is not None:
            request.transport.abort()


async def _end_stream(response: web.StreamResponse) -> None:
    """The last chunk. A client that left meanwhile (`| head`, Ctrl-C) is no error."""
    with contextlib.suppress(ConnectionError):
        await response.write_eof()


async def _write_lines(
    request: web.Request, response: web.StreamResponse, items: list[dict[str, Any]]
) -> None:
    if items:
        data = "".join(json.dumps(i) + "\n" for i in items).encode()
        await request.app[STREAMS_KEY].write(request, response, data)
