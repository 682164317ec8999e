"""The device-secret store: the only code that reads or writes the ``device_secrets`` table.

A device's credentials besides its MQTT account: the HJ 212 access password (PW, HJ 212-2017 Table 3,
sent in every packet) and the JT/T 808 auth code (issued by the gateway in 0x8100, presented by the
terminal in 0x0102). They are kept out of ``devices.attrs`` (a CHECK constraint refuses them there), so
nothing that reads ``devices`` (the JSON API, the Grafana role) can see them. Provisioning, the gateways,
the CLI and the simulators/benches that provision devices go through these functions. Every change is
announced on ``DEVICE_CREDENTIALS_CHANNEL`` by a trigger (core/sql/0102_device_secrets.sql), which is
how gateway caches learn of a revocation.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import asyncpg
import orjson

HJ212_PW = "hj212_pw"
JT808_AUTH = "jt808_auth"
KINDS = frozenset({HJ212_PW, JT808_AUTH})  # the CHECK on device_secrets.kind and devices.attrs lists these

_PUT = """
INSERT INTO device_secrets (device_id, kind, secret) VALUES ($1, $2, $3)
ON CONFLICT (device_id, kind) DO UPDATE SET secret = EXCLUDED.secret, updated_at = now()
    WHERE device_secrets.secret IS DISTINCT FROM EXCLUDED.secret"""

_DEVICE = """
SELECT d.device_id, d.region, d.stream, d.device_type, d.attrs::text AS attrs, d.removed_at IS NOT NULL AS removed,
       (SELECT jsonb_object_agg(s.kind, s.secret) FROM device_secrets s WHERE s.device_id = d.device_id)::text
           AS secrets
FROM devices d WHERE d.device_id = $1"""


def validate(secrets: Mapping[str, str]) -> None:
    """Known kinds with string values, or ValueError naming the bad one (never its value)."""
    for kind, secret in secrets.items():
        if kind not in KINDS:
            raise ValueError(f"unknown device secret kind {kind!r} (known: {', '.join(sorted(KINDS))})")
        if not isinstance(secret, str):
            raise ValueError(f"device secret {kind} must be a string")


async def put_many(con: asyncpg.Connection, rows: Iterable[tuple[str, str, str]]) -> None:
    """Set (device_id, kind, secret) rows; the device must exist. An unchanged secret is not rewritten
    (and so not announced)."""
    rows = list(rows)
    for device_id, kind, secret in rows:
        validate({kind: secret})
    if rows:
        await con.executemany(_PUT, rows)


async def put(con: asyncpg.Connection, device_id: str, secrets: Mapping[str, str]) -> None:
    await put_many(con, [(device_id, k, v) for k, v in secrets.items()])


async def get(con: asyncpg.Connection, device_id: str) -> dict[str, str]:
    """kind -> secret for one device (empty when it has none)."""
    rows = await con.fetch("SELECT kind, secret FROM device_secrets WHERE device_id = $1", device_id)
    return {r["kind"]: r["secret"] for r in rows}


async def revoke(con: asyncpg.Connection, device_id: str) -> list[str]:
    """Delete every secret of the device; returns the kinds that were there."""
    rows = await con.fetch("DELETE FROM device_secrets WHERE device_id = $1 RETURNING kind", device_id)
    return sorted(r["kind"] for r in rows)


async def fetch_device(con: asyncpg.Connection, device_id: str) -> dict | None:
    """What a gateway needs to admit a device, in one round trip: the registry row (``removed`` when
    ``wulian device remove`` revoked it) and its secrets."""
    row = await con.fetchrow(_DEVICE, device_id)
    if row is None:
        return None
    out = dict(row)
    out["attrs"] = orjson.loads(row["attrs"]) if row["attrs"] else {}
    out["secrets"] = orjson.loads(row["secrets"]) if row["secrets"] else {}
    return out
