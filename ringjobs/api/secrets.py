"""/v1 routes for namespace secrets. No response ever carries a secret's value."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ringjobs.exceptions import BadRequest, ValidationFailed
from ringjobs.models import Violation

if TYPE_CHECKING:
    from ringjobs.engine.engine import Engine

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def secret_routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/secrets", list_secrets),
        web.post("/v1/namespaces/{ns}/secrets", create_secret),
        web.delete("/v1/namespaces/{ns}/secrets/{name}", delete_secret),
    ]


def _engine(request: web.Request) -> Engine:
    from ringjobs.api.app import ENGINE_KEY  # app imports this module: resolve at call time

    return request.app[ENGINE_KEY]


def _namespace(raw: str) -> str:
    if not _DNS_LABEL.fullmatch(raw):
        raise BadRequest(
            f"invalid namespace {raw!r}: a DNS label (lowercase letters, digits and '-')"
        )
    return raw


async def list_secrets(request: web.Request) -> web.Response:
    namespace = request.query.get("namespace") or None
    rows = await _engine(request).secrets.listing(namespace)
    return web.json_response({"secrets": rows})


async def create_secret(request: web.Request) -> web.Response:
    namespace = _namespace(request.match_info["ns"])
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest('the body must be JSON: {"name": ..., "value": ...}') from None
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object: {"name": ..., "value": ...}')
    _reject_unknown(body)
    overwrite = body.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise BadRequest("overwrite must be true or false (a JSON boolean)")
    name = body.get("name")
    replaced = await _engine(request).secrets.put(namespace, name, body.get("value"), overwrite)
    return web.json_response(
        {"namespace": namespace, "name": name, "action": "updated" if replaced else "created"},
        status=200 if replaced else 201,
    )


def _reject_unknown(body: dict[str, Any]) -> None:
    unknown = sorted(str(k) for k in body if k not in ("name", "value", "overwrite"))
    if unknown:
        raise ValidationFailed(
            [
                Violation(
                    path=k,
                    message="unknown field (known: name, value, overwrite)",
                    code="unknown_field",
                )
                for k in unknown
            ],
            title="invalid secret",
        )


async def delete_secret(request: web.Request) -> web.Response:
    namespace = _namespace(request.match_info["ns"])
    name = request.match_info["name"]
    force = (request.query.get("force") or "").lower() in ("1", "true", "yes")
    refs = await _engine(request).secrets.delete(namespace, name, force)
    return web.json_response({"deleted": f"{namespace}/{name}", "referenced_by": refs})
