"""API keys: who is calling, as which tenant, with which roles.

A key looks like ``rfk_<id>_<secret>``: ``id`` (12 hex digits) names its entry in the keys file,
``secret`` is 32 random bytes (URL-safe base64). The file stores only the SHA-256 of the whole
key, never the key. A plain hash is enough because the secret is random and 256 bits long: a
slow password hash (argon2, bcrypt) protects low-entropy passwords from guessing, and guessing
2^256 secrets is out of reach at any hashing speed, so it would only add milliseconds to every
request. Hashes are compared in constant time.

The keys file (JSON or YAML, ``GatewaySettings.api_keys_file``)::

    keys:
      - id: 3f9a1c2b4d5e
        tenant: acme
        roles: [query, ingest]
        sha256: 9c1185a5c5e9fc54612808977ee8f548b2258d31...
        label: ci pipeline            # optional, for people

is re-read when it changes (its modification time, size or inode), so keys are added, rotated
and revoked without a restart; a file that no longer parses keeps the keys last read (and is
logged). Roles: ``query`` (ask, retrieve, chat completions, models), ``ingest`` (ingest, ingest
jobs, and the deletes a re-ingest or sync makes) and ``admin`` (everything, in any tenant).

The key decides the tenant: a request's tenant may be empty (the key's) or the key's own; any
other is PERMISSION_DENIED, unless the key is an admin's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ragfleet.runtime.errors import PermissionDenied, Unauthenticated
from ragfleet.runtime.logging import get_logger
from ragfleet.runtime.server import Authenticate, bearer_token

log = get_logger(__name__)

KEY_PREFIX = "rfk"


class Role(StrEnum):
    QUERY = "query"
    INGEST = "ingest"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    """One entry of the keys file."""

    id: str
    tenant: str
    roles: frozenset[Role]
    sha256: str
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.id,
            "tenant": self.tenant,
            "roles": sorted(self.roles),
            "sha256": self.sha256,
        }
        if self.label:
            entry["label"] = self.label
        return entry


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(tenant: str, roles: frozenset[Role], label: str = "") -> tuple[str, ApiKey]:
    """A fresh random key and its entry (which holds only the key's hash)."""
    if not tenant.strip():
        raise ValueError("tenant: a key belongs to one non-empty tenant")
    if not roles:
        raise ValueError("roles: give at least one of query, ingest, admin")
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key, ApiKey(key_id, tenant, roles, hash_key(key), label)


def parse_keys(text: str, where: str) -> dict[str, ApiKey]:
    """The entries of a keys file's text (JSON or YAML), by id; ``ValueError`` naming the
    entry when one is malformed."""
    data = yaml.safe_load(text) if text.strip() else {}
    entries = (data or {}).get("keys", []) if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a mapping with a 'keys' list")
    keys: dict[str, ApiKey] = {}
    for i, entry in enumerate(entries):
        try:
            roles = frozenset(Role(r) for r in entry["roles"])
            key = ApiKey(
                id=str(entry["id"]),
                tenant=str(entry["tenant"]),
                roles=roles,
                sha256=str(entry["sha256"]).lower(),
                label=str(entry.get("label", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: keys[{i}] is malformed: {exc!r}") from None
        if not key.tenant or not key.roles or len(key.sha256) != 64:
            raise ValueError(f"{where}: keys[{i}] needs a tenant, roles and a SHA-256 hex digest")
        if key.id in keys:
            raise ValueError(f"{where}: keys[{i}] repeats the id {key.id!r}")
        keys[key.id] = key
    return keys


def add_key(path: Path, entry: ApiKey) -> None:
    """Adds ``entry`` to the keys file at ``path`` (created, owner-only, when missing). The
    file is replaced whole (written beside it, then renamed), so a gateway never reads half."""
    keys = parse_keys(path.read_text(encoding="utf-8"), str(path)) if path.exists() else {}
    keys[entry.id] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"keys": [k.to_json() for k in keys.values()]}, indent=2) + "\n"
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(partial, path)


class KeyStore:
    """The keys file, re-read whenever it changes. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._keys = parse_keys(path.read_text(encoding="utf-8"), str(path))
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _refresh(self) -> None:
        stamp = self._stamp()
        if stamp == self._seen:
            return
        with self._lock:
            if stamp == self._seen:
                return
            self._seen = stamp
            try:
                self._keys = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.error("api_keys_unreadable", path=str(self.path), error=str(exc))
                return
            log.info("api_keys_loaded", path=str(self.path), keys=len(self._keys))

    def find(self, key: str) -> ApiKey | None:
        """The entry of ``key``, or None when it is malformed, unknown or revoked."""
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != KEY_PREFIX or not key_id or not secret:
            return None
        self._refresh()
        entry = self._keys.get(key_id)
        if entry is None or not hmac.compare_digest(hash_key(key), entry.sha256):
            return None
        return entry


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key's tenant and roles. ``unrestricted`` (authentication
    disabled) may name any tenant, and an empty tenant then filters nothing."""

    key_id: str
    tenant: str
    roles: frozenset[Role]
    unrestricted: bool = False

    def require(self, role: Role, door: str) -> None:
        if role not in self.roles and Role.ADMIN not in self.roles:
            raise PermissionDenied(
                f"{door}: needs the {role.value} role; this key has {', '.join(sorted(self.roles))}"
            )

    def tenant_for(self, requested: str, field: str = "tenant") -> str:
        """The tenant a request acts in: the key's when ``requested`` is empty or the key's;
        any other is PERMISSION_DENIED unless the key is an admin's."""
        if self.unrestricted or requested == self.tenant:
            return requested
        if not requested:
            return self.tenant
        if Role.ADMIN in self.roles:
            return requested
        raise PermissionDenied(f"{field}: this key belongs to another tenant")


OPEN = Principal(key_id="", tenant="", roles=frozenset(Role), unrestricted=True)
"""The caller of a gateway with authentication disabled."""

PRINCIPAL: ContextVar[Principal | None] = ContextVar("ragfleet_principal", default=None)
"""The caller of the RPC this task serves, set by the gateway's authentication interceptor."""


def current_principal() -> Principal:
    principal = PRINCIPAL.get()
    if principal is None:
        raise Unauthenticated("this call was not authenticated")
    return principal


class Authenticator:
    """Turns a bearer token into a ``Principal``; ``keys`` None means authentication is
    disabled (every caller is ``OPEN``)."""

    def __init__(self, keys: KeyStore | None) -> None:
        self.keys = keys

    @classmethod
    def from_settings(cls, api_keys_file: Path | None, auth_disabled: bool) -> Authenticator:
        """Refuses (``ValueError``) to run open by accident: without a keys file,
        ``auth_disabled`` must say so."""
        if api_keys_file is not None:
            return cls(KeyStore(api_keys_file))
        if not auth_disabled:
            raise ValueError(
                "the gateway needs API keys: set RAGFLEET_GATEWAY_API_KEYS_FILE (make one with "
                "`ragfleet keys create`), or RAGFLEET_GATEWAY_AUTH_DISABLED=true for a local "
                "experiment that anyone who reaches the ports may use"
            )
        log.warning("auth_disabled", note="every caller may use every tenant")
        return cls(None)

    def principal(self, token: str | None) -> Principal:
        if self.keys is None:
            return OPEN
        if token is None:
            raise Unauthenticated(
                "an API key is required (gRPC metadata or HTTP header authorization: Bearer <key>)"
            )
        entry = self.keys.find(token)
        if entry is None:
            raise Unauthenticated("the API key is not valid (unknown, revoked or malformed)")
        return Principal(entry.id, entry.tenant, entry.roles)


GRPC_ROLES: dict[str, Role] = {
    "/ragfleet.gateway.v1.GatewayService/Ask": Role.QUERY,
    "/ragfleet.gateway.v1.GatewayService/Retrieve": Role.QUERY,
    "/ragfleet.gateway.v1.GatewayService/Ingest": Role.INGEST,
    "/ragfleet.gateway.v1.GatewayService/Feedback": Role.QUERY,
}
"""The role each RPC needs; an RPC not listed needs ``admin``, so a new one starts closed."""


def grpc_authenticate(authenticator: Authenticator) -> Authenticate:
    """The gateway server's check: the caller's key, the RPC's role; the ``Principal`` is left
    in ``PRINCIPAL`` for the servicer."""

    def authenticate(method: str, metadata: Any) -> None:
        principal = authenticator.principal(bearer_token(metadata))
        principal.require(GRPC_ROLES.get(method, Role.ADMIN), method.rsplit("/", 1)[-1])
        PRINCIPAL.set(principal)

    return authenticate


_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="an API key (`ragfleet keys create`) as Authorization: Bearer <key>",
)


def rest_authorization(
    authenticator: Authenticator, role: Role, door: str
) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller's ``Principal`` when its bearer key is valid and has
    ``role``; otherwise it raises ``Unauthenticated`` / ``PermissionDenied``."""

    async def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> Principal:
        principal = authenticator.principal(
            None if credentials is None else credentials.credentials
        )
        principal.require(role, door)
        return principal

    return authorize
