"""API keys with roles and region scope.

A key reads ``wl_<key_id>_<secret>``: ``key_id`` finds the row, the secret is checked against its
stored SHA-256 in constant time (keys are 190-bit random strings, so a fast hash is the right one).
Roles: ``regulator`` reads and acknowledges in its regions; ``operator`` may do everything in its
regions; ``admin`` everything, including keys and rules. A principal never sees another region's data:
routes filter by :meth:`Principal.region_filter` and answer 404 for objects outside the scope.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated

import asyncpg
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from wulian.api.deps import PoolDep
from wulian.api.errors import ApiError
from wulian.api.observability import AUTH_FAILURES, RATE_LIMITED
from wulian.ingest import audit

ROLES = ("regulator", "operator", "admin")
API_KEY_HEADER = "X-API-Key"
KEY_FORMAT = "wl_<key_id>_<secret>"
# The two ways a key is sent, declared as OpenAPI security schemes (either one satisfies a route), so
# /docs has an Authorize button and every protected operation lists them.
API_KEY_SCHEME = APIKeyHeader(name=API_KEY_HEADER, scheme_name="ApiKey", auto_error=False,
                              description=f"API key `{KEY_FORMAT}` in the `{API_KEY_HEADER}` header")
BEARER_SCHEME = HTTPBearer(scheme_name="Bearer", bearerFormat=KEY_FORMAT, auto_error=False,
                           description=f"API key `{KEY_FORMAT}` as `Authorization: Bearer <key>`")
_RANK = {r: i for i, r in enumerate(ROLES)}


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason  # metric label: missing, malformed, unknown, revoked, expired


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many requests for this key; retry after {retry_after:.1f}s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    role: str
    regions: frozenset[str]  # empty: all regions

    @property
    def all_regions(self) -> bool:
        return not self.regions

    def region_filter(self) -> list[str] | None:
        """``None`` for all regions, else the list to pass as ``region = ANY($n)``."""
        return None if self.all_regions else sorted(self.regions)

    def can_see(self, region: str) -> bool:
        return self.all_regions or region in self.regions

    def require(self, role: str) -> None:
        if _RANK[self.role] < _RANK[role]:
            raise Forbidden(f"this action needs the {role} role")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> tuple[str, str, str]:
    """Returns (full key, key_id, secret hash)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return f"wl_{key_id}_{secret}", key_id, _hash(secret)


async def create_key(
    con: asyncpg.Connection, *, name: str, role: str, regions: list[str], expires_days: float | None = None,
    audit_actor: str | None = None, audit_source: str = "cli",
) -> str:
    """Create a key; returns it (shown once). With ``audit_actor`` the creation is audited."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if role != "admin" and not regions:
        raise ValueError("regulator and operator keys need at least one region")
    key, key_id, secret_hash = generate_key()
    expires = datetime.now(timezone.utc) + timedelta(days=expires_days) if expires_days else None
    async with con.transaction():
        row = await con.fetchrow(
            "INSERT INTO api_keys (key_id, secret_hash, name, role, regions, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLS}",
            key_id, secret_hash, name, role, sorted(set(regions)), expires)
        if audit_actor is not None:
            await audit.record(con, actor=audit_actor, source=audit_source, action="key.create", object_type="api_key",
                               object_id=key_id, after=key_public(row))
    return key


# The columns of a key as listed and audited (never the secret's hash).
KEY_COLS = ("key_id, name, role, regions, created_at, expires_at, revoked_at, last_used_at,"
             " (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())) AS active")


def key_public(row) -> dict:
    return {k: (list(row[k]) if k == "regions" else row[k]) for k in
            ("key_id", "name", "role", "regions", "created_at", "expires_at", "revoked_at", "last_used_at", "active")}


async def revoke_key(con: asyncpg.Connection, key_id: str, *, actor: str | None = None, source: str = "cli",
                     actor_key_id: str | None = None) -> bool:
    """Revoke an active key; with ``actor``, the change is audited (before/after) in the same transaction."""
    async with con.transaction():
        before = await con.fetchrow(f"SELECT {KEY_COLS} FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL"
                                    " FOR UPDATE", key_id)
        if before is None:
            return False
        after = await con.fetchrow(f"UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 RETURNING {KEY_COLS}",
                                   key_id)
        if actor is not None:
            await audit.record(con, actor=actor, source=source, key_id=actor_key_id, action="key.revoke",
                               object_type="api_key", object_id=key_id, before=key_public(before),
                               after=key_public(after))
    return True


def _parse(raw: str) -> tuple[str, str]:
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != "wl" or len(parts[1]) != 12 or not parts[2]:
        raise Unauthorized("malformed API key", "malformed")
    return parts[1], parts[2]


async def authenticate(pool: asyncpg.Pool, raw: str) -> Principal:
    try:
        return await _authenticate(pool, raw)
    except Unauthorized as exc:
        AUTH_FAILURES.labels(exc.reason).inc()
        raise


async def _authenticate(pool: asyncpg.Pool, raw: str) -> Principal:
    key_id, secret = _parse(raw)
    async with pool.acquire() as con:
        row = await con.fetchrow(
            "UPDATE api_keys SET last_used_at = now() WHERE key_id = $1"
            " RETURNING secret_hash, name, role, regions, expires_at, revoked_at", key_id)
    if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
        raise Unauthorized("unknown API key", "unknown")
    if row["revoked_at"] is not None:
        raise Unauthorized("API key revoked", "revoked")
    if row["expires_at"] is not None and row["expires_at"] <= datetime.now(timezone.utc):
        raise Unauthorized("API key expired", "expired")
    return Principal(key_id, row["name"], row["role"], frozenset(row["regions"]))


async def current_user(
    request: Request,
    pool: PoolDep,
    x_api_key: Annotated[str | None, Security(API_KEY_SCHEME)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
) -> Principal:
    raw = x_api_key
    if raw is None and bearer is not None:
        raw = bearer.credentials.strip()
    elif raw is None and request.headers.get("authorization"):  # another scheme, or Bearer without a key
        raise Unauthorized(f"use 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'", "malformed")
    if not raw:
        AUTH_FAILURES.labels("missing").inc()
        raise Unauthorized(f"API key required ('Authorization: Bearer <key>' or '{API_KEY_HEADER}')", "missing")
    principal = await authenticate(pool, raw)
    wait = request.app.state.rate_limits.take(principal.key_id)
    if wait:
        RATE_LIMITED.inc()
        raise RateLimited(wait)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]
