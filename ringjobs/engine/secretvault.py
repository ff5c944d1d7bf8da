"""Namespace secrets: sealed on the way in, opened only to create a container.

Values never leave this module except as the environment handed to the runtime:
listings carry names, times and references, never values or ciphertext.
"""

from __future__ import annotations

import json
from typing import Any

from ringjobs.engine.containers import ConfigProblem
from ringjobs.exceptions import Conflict, NotFound, RingjobsError, ValidationFailed
from ringjobs.models import SecretRef, Violation
from ringjobs.secrets import SecretBox, SecretUnreadable, secret_name_problem, secret_value_problem
from ringjobs.store import Store


class SecretsUnavailable(RingjobsError):
    """The daemon was started without a secret key (only in embedded/test set-ups)."""

    status = 503
    code = "secrets_unavailable"


def secret_refs(environment: dict[str, Any]) -> dict[str, str]:
    """Variable name -> secret name, for stored ({"secretRef": ...}) or parsed values."""
    refs = {}
    for var, value in environment.items():
        if isinstance(value, SecretRef):
            refs[var] = value.secret_ref
        elif isinstance(value, dict):
            # Stored namespace settings hold the field name; manifests the alias.
            ref = value.get("secretRef", value.get("secret_ref"))
            if isinstance(ref, str):
                refs[var] = ref
    return refs


class SecretVault:
    """Create, list, delete and (for the executor only) reveal namespace secrets."""

    def __init__(self, store: Store, box: SecretBox | None) -> None:
        self.store = store
        self.box = box

    def _key(self) -> SecretBox:
        if self.box is None:
            raise SecretsUnavailable(
                "this daemon has no secret key; start it with `ringjobs daemon` "
                "(it creates secrets.key_file) or set RINGJOBS_SECRET_KEY"
            )
        return self.box

    async def put(self, namespace: str, name: object, value: object, overwrite: bool) -> bool:
        """Seal and store a value; returns whether an existing secret was replaced."""
        problems = [
            Violation(path=path, message=problem, code="invalid_value")
            for path, problem in (
                ("name", secret_name_problem(name)),
                ("value", secret_value_problem(value)),
            )
            if problem
        ]
        if problems:
            raise ValidationFailed(problems, title="invalid secret")
        assert isinstance(name, str) and isinstance(value, str)
        if not overwrite and await self.store.get_secret(namespace, name) is not None:
            raise Conflict(
                f"secret {namespace}/{name} already exists; pass --overwrite to replace its value"
            )
        sealed = self._key().seal(namespace, name, value)
        return await self.store.put_secret(namespace, name, sealed)

    async def listing(self, namespace: str | None) -> list[dict[str, Any]]:
        rows = await self.store.list_secrets(namespace)
        out = []
        for row in rows:
            refs = await self.references(row["namespace"], row["name"])
            out.append(
                {
                    "namespace": row["namespace"],
                    "name": row["name"],
                    "created_at": row["created_at"],
                    "updated_at": row["updated_at"],
                    "referenced_by": refs,
                }
            )
        return out

    async def delete(self, namespace: str, name: str, force: bool) -> list[str]:
        """Delete a secret; refused while something refers to it unless forced.
        Returns what referred to it."""
        if await self.store.get_secret(namespace, name) is None:
            raise NotFound(
                f"secret {namespace}/{name} does not exist; `ringjobs secret list -n "
                f"{namespace}` shows the secrets"
            )
        refs = await self.references(namespace, name)
        if refs and not force:
            raise Conflict(
                f"secret {namespace}/{name} is referenced by {', '.join(refs)}; their runs "
                "would fail with config_error. Pass --force to delete it anyway"
            )
        await self.store.delete_secret(namespace, name)
        return refs

    async def references(self, namespace: str, name: str) -> list[str]:
        """What refers to the secret: the namespace's environment, jobs, unfinished runs."""
        refs = []
        ns = await self.store.get_namespace(namespace)
        if ns is not None and name in _stored_namespace_refs(ns).values():
            refs.append(f"namespace {namespace} environment")
        for job in await self.store.list_jobs(namespace):
            if name in secret_refs(job.spec.environment).values():
                refs.append(f"job {job.spec.key}")
        for run in await self.store.active_runs():
            if run.namespace == namespace and name in secret_refs(run.spec.environment).values():
                refs.append(f"run {run.id}")
        return refs

    async def reveal(self, namespace: str, names: set[str]) -> dict[str, str]:
        """Secret name -> value, for container creation only. A missing or unreadable
        secret is a ConfigProblem naming every one of them."""
        values, missing = {}, []
        for name in sorted(names):
            sealed = await self.store.get_secret(namespace, name)
            if sealed is None:
                missing.append(name)
                continue
            try:
                values[name] = self._key().open(namespace, name, sealed)
            except SecretUnreadable as exc:
                raise ConfigProblem(str(exc)) from None
            except SecretsUnavailable as exc:
                raise ConfigProblem(str(exc)) from None
        if missing:
            raise ConfigProblem(
                f"secret not found in namespace {namespace}: {', '.join(missing)}; create it "
                f"with `ringjobs secret create NAME -n {namespace}`"
            )
        return values


def _stored_namespace_refs(ns: dict[str, Any]) -> dict[str, str]:
    settings = json.loads(ns.get("environment") or "{}")
    return secret_refs(settings.get("environment") or {})
