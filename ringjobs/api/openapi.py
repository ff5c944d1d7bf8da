"""The OpenAPI 3.1 description of /v1, served at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

from ringjobs import __version__
from ringjobs.mediatypes import LOG_FRAMES, NDJSON

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_RUN = {"$ref": "#/components/schemas/Run"}


def _answer(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"description": "OK", "content": {media: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "problem",
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
        for code in codes
    }


def _param(name: str, kind: str = "string", where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": {"type": kind}}


def _op(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": ok, **_errors(*errors)}, **extra}


_DNS_LABEL = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def _label(name: str, where: str = "path") -> dict[str, Any]:
    """A namespace or job name: a DNS label."""
    param = _param(name, where=where)
    param["schema"]["pattern"] = _DNS_LABEL
    return param


_NS_NAME = [_label("ns"), _label("name")]
_RUN_ID = [_param("id", "integer", "path")]
_OBJECT = {"type": "object"}


def _paths() -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": _OBJECT}}}
    return {
        "/v1/health": {"get": _op("Daemon, Docker and database health", _answer(_OBJECT))},
        "/v1/apply": {
            "post": _op(
                "Apply manifests",
                _answer(_OBJECT),
                400,
                403,
                413,
                422,
                requestBody={**body, "required": True},
            )
        },
        "/v1/jobs": {
            "get": _op(
                "List jobs", _answer(_OBJECT), 404, parameters=[_label("namespace", "query")]
            )
        },
        "/v1/jobs/{ns}/{name}": {
            "get": _op("Inspect a job", _answer(_OBJECT), 404, parameters=_NS_NAME),
            "delete": _op("Delete a job", _answer(_OBJECT), 403, 404, 409, parameters=_NS_NAME),
        },
        "/v1/jobs/{ns}/{name}/runs": {
            "post": {
                "summary": "Start a run of the current revision",
                "parameters": _NS_NAME,
                "requestBody": body,
                "responses": {"201": _answer(_RUN), **_errors(400, 403, 404, 409, 422)},
            },
        },
        "/v1/runs": {
            "get": _op(
                "List runs, newest first",
                _answer(_OBJECT),
                400,
                404,
                parameters=[
                    _label("namespace", "query"),
                    _label("job", "query"),
                    _param("status"),
                    _param("limit", "integer"),
                    _param("before", "integer"),
                ],
            )
        },
        "/v1/runs/{id}": {"get": _op("Inspect a run", _answer(_RUN), 400, 404, parameters=_RUN_ID)},
        "/v1/runs/{id}/wait": {
            "get": _op(
                "Wait until the run is terminal or timeout",
                _answer(_RUN),
                400,
                404,
                429,
                parameters=[*_RUN_ID, _param("timeout", "integer")],
            )
        },
        "/v1/runs/{id}/cancel": {
            "post": _op(
                "Cancel a pending or running run",
                _answer(_RUN),
                400,
                403,
                404,
                409,
                parameters=_RUN_ID,
            )
        },
        "/v1/runs/{id}/rerun": {
            "post": {
                "summary": "Replay a run's snapshot with optional overrides",
                "parameters": _RUN_ID,
                "requestBody": body,
                "responses": {"201": _answer(_RUN), **_errors(400, 403, 404, 409, 422)},
            }
        },
        "/v1/exec": {
            "post": {
                "summary": "Start a recorded one-off run",
                "requestBody": body,
                "responses": {"201": _answer(_RUN), **_errors(400, 403, 422)},
            }
        },
        "/v1/runs/{id}/logs": {
            "get": _op(
                "Log records as NDJSON; with `Accept: " + LOG_FRAMES + "`, the lines as the "
                "CLI prints them, in frames of one stream (docs/api.md)",
                {
                    "description": "OK",
                    "content": {
                        NDJSON: {"schema": _OBJECT},
                        LOG_FRAMES: {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                400,
                404,
                429,
                parameters=[
                    *_RUN_ID,
                    _param("follow"),
                    _param("tail", "integer"),
                    _param("since"),
                    _param("stream"),
                    _param("timestamps"),
                ],
            )
        },
        "/v1/runs/{id}/events": {
            "get": _op(
                "Events as NDJSON",
                _answer(_OBJECT, NDJSON),
                400,
                404,
                429,
                parameters=[*_RUN_ID, _param("follow")],
            )
        },
        "/v1/namespaces": {"get": _op("List namespaces", _answer(_OBJECT))},
        "/v1/secrets": {
            "get": _op(
                "List secrets: names, times and references, never values",
                _answer(_OBJECT),
                parameters=[_param("namespace")],
            )
        },
        "/v1/namespaces/{ns}/secrets": {
            "post": {
                "summary": "Create (or with overwrite, replace) an encrypted secret",
                "parameters": [_param("ns", where="path")],
                "requestBody": {**body, "required": True},
                "responses": {
                    "201": _answer(_OBJECT),
                    "200": _answer(_OBJECT),
                    **_errors(400, 409, 422),
                },
            }
        },
        "/v1/namespaces/{ns}/secrets/{name}": {
            "delete": _op(
                "Delete a secret; refused while referenced unless force",
                _answer(_OBJECT),
                400,
                404,
                409,
                parameters=[*_NS_NAME, _param("force")],
            )
        },
        "/v1/namespaces/{ns}/prune": {
            "post": _op(
                "Remove finished runs with their logs, events and containers",
                _answer(_OBJECT),
                400,
                403,
                404,
                parameters=[_label("ns")],
                requestBody={"content": {"application/json": {"schema": _PRUNE}}},
            )
        },
        "/v1/audit": {
            "get": _op(
                "Changes made through the socket, newest first, with the caller's uid and pid",
                _answer(_OBJECT),
                400,
                parameters=[
                    _param("run", "integer"),
                    _param("limit", "integer"),
                    _param("before", "integer"),
                ],
            )
        },
        **_schedule_paths(),
    }


_PRUNE = {
    "type": "object",
    "properties": {
        "all": {"type": "boolean", "description": "cancel and remove active runs too"},
        "dry_run": {"type": "boolean"},
        "older_than": {"type": "string", "description": "a duration: 30d, 12h"},
        "keep_last": {"type": "integer", "minimum": 0, "description": "newest N per job kept"},
        "status": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "only runs with these statuses (active ones need all)",
        },
    },
}


def _schedule_paths() -> dict[str, Any]:
    schedule = {"$ref": "#/components/schemas/Schedule"}
    listing = {"type": "object", "properties": {"schedules": {"type": "array", "items": schedule}}}
    fires = {"type": "object", "properties": {"fires": {"type": "array", "items": _OBJECT}}}
    return {
        "/v1/schedules": {
            "get": _op(
                "Every schedule with its next fire and last scheduled run",
                _answer(listing),
                404,
                parameters=[_param("namespace")],
            )
        },
        "/v1/jobs/{ns}/{name}/suspend": {
            "post": _op(
                "Stop a job's schedule fires", _answer(schedule), 404, 409, parameters=_NS_NAME
            )
        },
        "/v1/jobs/{ns}/{name}/resume": {
            "post": _op(
                "Restart a job's schedule fires (missed ones are not caught up)",
                _answer(schedule),
                404,
                409,
                parameters=_NS_NAME,
            )
        },
        "/v1/jobs/{ns}/{name}/fires": {
            "get": _op(
                "A job's recent schedule fires: started, skipped or missed",
                _answer(fires),
                400,
                404,
                parameters=[*_NS_NAME, _param("limit", "integer")],
            )
        },
    }


def _schedule_schema() -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return {
        "type": "object",
        "required": [
            "namespace",
            "job",
            "schedule",
            "time_zone",
            "suspended",
            "next_run_at",
            "last_run_id",
            "last_status",
        ],
        "properties": {
            "namespace": {"type": "string"},
            "job": {"type": "string"},
            "schedule": {"type": "string"},
            "time_zone": {"type": "string"},
            "suspended": {"type": "boolean"},
            "suspended_by": nullable_str,
            "starting_deadline_seconds": {"type": ["number", "null"]},
            "concurrency_policy": {"type": "string"},
            "next_run_at": {**nullable_str, "description": "RFC 3339 UTC"},
            "next_run_at_local": {**nullable_str, "description": "in the job's time zone"},
            "last_run_id": {"type": ["integer", "null"]},
            "last_status": nullable_str,
            "last_run_at": nullable_str,
            "last_fire": {"type": ["object", "null"]},
        },
    }


def _schemas() -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    nullable_int = {"type": ["integer", "null"]}
    run_props = {
        "id": {"type": "integer"},
        "namespace": {"type": "string"},
        "job": {"type": "string"},
        "revision": {"type": "integer"},
        "trigger": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["pending", "starting", "running", "completed", "failed", "cancelled"],
        },
        "reason": nullable_str,
        "message": nullable_str,
        "exit_code": nullable_int,
        "oom_killed": {"type": "boolean"},
        "stop_intent": nullable_str,
        "attempt": {"type": "integer"},
        "created_at": {"type": "string"},
        "started_at": nullable_str,
        "finished_at": nullable_str,
        "image": nullable_str,
        "image_id": nullable_str,
        "container_id": nullable_str,
        "command": {"type": ["array", "null"], "items": {"type": "string"}},
        "log_bytes": {"type": "integer"},
        "log_truncated": {"type": "boolean"},
        "caller_uid": nullable_int,
    }
    violation = {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "message": {"type": "string"},
            "code": {"type": "string"},
            "source": nullable_str,
        },
    }
    problem = {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "violations": {"type": "array", "items": violation},
        },
    }
    return {
        "Run": {"type": "object", "properties": run_props},
        "Problem": problem,
        "Schedule": _schedule_schema(),
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "ringjobs", "version": __version__},
        "servers": [{"url": "http://localhost"}],
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    }
