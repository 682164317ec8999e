"""The device store: the only code that writes the ``devices`` registry (and its common lookups).

Who registers a device, and what happens when it is already there, differs by caller; each caller names
its :class:`OnConflict` policy instead of writing its own ``INSERT INTO devices``:

- :data:`PROVISION` (``wulian device add``, benches): the spec wins where it says something, attrs are
  merged, a removed device is brought back;
- :data:`AUTO_PROVISION` (a gateway meeting an unknown device): the same, but the row is marked
  ``auto_registered`` and a removed device stays removed;
- :data:`REDEFINE` / :data:`REDEFINE_IN_PLACE` (the environment / energy simulators): the fleet's
  definition replaces the attrs; in place keeps the region and stream an existing device has;
- :data:`ADD_MISSING` (the traffic replay): an existing device keeps what it has, new attrs are merged in.

Ingest's auto-registration (:func:`register_missing`) never touches an existing row. Secrets go to the
device-secret store (ingest/device_secrets.py) in the same transaction, never into ``attrs``; every change
of a row is announced to the gateways' caches by trigger (core/sql/0102_device_secrets.sql).

Two value types, two roles: :class:`DeviceSpec` is what to register (no id yet, may carry secrets);
:class:`DeviceRef` is a registered row's identity (what an alert target or a job's result row needs).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Iterable, Mapping

import asyncpg
import orjson

from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN
from wulian.ingest import device_secrets
from wulian.ingest.stream_registry import current

_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)
_REGION_RE = re.compile(REGION_PATTERN)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What to register (``wulian device add``, a gateway's auto-provisioning, a simulator's fleet).
    ``secrets`` (kind -> secret, kinds of ingest/device_secrets.py) go to the device-secret store."""

    device_id: str
    region: str
    stream: str
    device_type: str | None = None
    name: str | None = None
    attrs: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict, repr=False)

    def validate(self, streams: Mapping[str, list[str]] | None = None) -> None:
        """``streams``: the stream registry's {stream: accepted device types} (empty list: any); without
        it the process's registry snapshot, device types unchecked."""
        if not _DEVICE_RE.match(self.device_id):
            raise ValueError(f"invalid device id {self.device_id!r}")
        if not _REGION_RE.match(self.region):
            raise ValueError(f"invalid region {self.region!r}")
        known = streams if streams is not None else {n: [] for n in current().names()}
        if self.stream not in known:
            raise ValueError(f"unknown stream {self.stream!r}")
        if known[self.stream] and self.device_type is not None and self.device_type not in known[self.stream]:
            raise ValueError(f"stream {self.stream!r} accepts device types {known[self.stream]}, not {self.device_type!r}")
        leaked = sorted(device_secrets.KINDS & set(self.attrs))
        if leaked:
            raise ValueError(f"{', '.join(leaked)} is a secret: pass it in secrets, not attrs")
        device_secrets.validate(self.secrets)


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A registered device's identity, what an alert target needs (``alert_store.target_of``)."""

    id: int
    device_id: str
    region: str
    stream: str


@dataclass(frozen=True, slots=True)
class Registered:
    """One row :func:`upsert_many` wrote: its identity as stored (``region``/``stream`` are the existing
    ones under a policy that does not move devices) and whether it was created now."""

    id: int
    device_id: str
    region: str
    stream: str
    created: bool


@dataclass(frozen=True, slots=True)
class OnConflict:
    """What an upsert does to a device that is already registered (module docstring)."""

    move: bool  # region and stream follow the spec
    spec_wins: bool  # device_type and name: the spec's where given (else the existing ones where set)
    replace_attrs: bool  # attrs replaced by the spec's (else merged into the existing ones)
    revive: bool  # a removed device is registered again
    auto: bool = False  # a new row is marked auto_registered


PROVISION = OnConflict(move=True, spec_wins=True, replace_attrs=False, revive=True)
AUTO_PROVISION = OnConflict(move=True, spec_wins=True, replace_attrs=False, revive=False, auto=True)
REDEFINE = OnConflict(move=True, spec_wins=True, replace_attrs=True, revive=False)
REDEFINE_IN_PLACE = OnConflict(move=False, spec_wins=True, replace_attrs=True, revive=False)
ADD_MISSING = OnConflict(move=False, spec_wins=False, replace_attrs=False, revive=False)


@cache
def _upsert_sql(p: OnConflict) -> str:
    new, old = ("EXCLUDED", "d") if p.spec_wins else ("d", "EXCLUDED")
    sets = ["region = EXCLUDED.region", "stream = EXCLUDED.stream"] if p.move else []
    sets += [f"device_type = COALESCE({new}.device_type, {old}.device_type)",
             f"name = COALESCE({new}.name, {old}.name)",
             "attrs = EXCLUDED.attrs" if p.replace_attrs else "attrs = d.attrs || EXCLUDED.attrs"]
    if p.revive:
        sets.append("removed_at = NULL")
    return f"""
INSERT INTO devices AS d (device_id, region, stream, device_type, name, attrs, auto_registered)
SELECT u.device_id, u.region, u.stream, u.device_type, u.name, u.attrs::jsonb, {'true' if p.auto else 'false'}
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
    AS u(device_id, region, stream, device_type, name, attrs)
ON CONFLICT (device_id) DO UPDATE SET {', '.join(sets)}
RETURNING d.id, d.device_id, d.region, d.stream, (d.xmax = 0) AS created"""


async def stream_device_types(con: asyncpg.Connection) -> dict[str, list[str]]:
    """The stream registry's accepted device types (core/sql/0140_streams.sql)."""
    return {r["name"]: list(r["device_types"]) for r in await con.fetch("SELECT name, device_types FROM streams")}


async def upsert_many(con: asyncpg.Connection, specs: Iterable[DeviceSpec], policy: OnConflict = PROVISION
                      ) -> list[Registered]:
    """Register ``specs`` (distinct device ids) and their secrets in one transaction; returns the rows
    in the order of ``specs``. Every spec is validated first: a bad one writes nothing."""
    specs = list(specs)
    streams = await stream_device_types(con)
    for spec in specs:
        spec.validate(streams)
    if not specs:
        return []
    cols = list(zip(*[(s.device_id, s.region, s.stream, s.device_type, s.name, json.dumps(s.attrs))
                      for s in specs]))
    async with con.transaction():
        rows = await con.fetch(_upsert_sql(policy), *map(list, cols))
        await device_secrets.put_many(con, [(s.device_id, k, v) for s in specs for k, v in s.secrets.items()])
    by_id = {r["device_id"]: Registered(r["id"], r["device_id"], r["region"], r["stream"], r["created"])
             for r in rows}
    return [by_id[s.device_id] for s in specs]


async def upsert(con: asyncpg.Connection, spec: DeviceSpec, policy: OnConflict = PROVISION) -> tuple[int, bool]:
    """One device (and its secrets); returns (registry id, created)."""
    (row,) = await upsert_many(con, [spec], policy)
    return row.id, row.created


async def register_missing(con: asyncpg.Connection, wanted: Mapping[str, tuple[str, str]]) -> None:
    """Ingest's auto-registration: ``{device_id: (region, stream)}`` rows that do not exist yet are
    inserted as ``auto_registered``; an existing row (removed or not) is left exactly as it is."""
    ids = list(wanted)
    await con.execute(
        "INSERT INTO devices (device_id, region, stream, auto_registered)"
        " SELECT *, true FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT (device_id) DO NOTHING",
        ids, [wanted[d][0] for d in ids], [wanted[d][1] for d in ids])


async def lookup_many(con: asyncpg.Connection, device_ids: Iterable[str]) -> list[asyncpg.Record]:
    """``id, device_id, region, stream, device_type`` of the registered ones among ``device_ids``."""
    return await con.fetch(
        "SELECT id, device_id, region, stream, device_type FROM devices WHERE device_id = ANY($1::text[])",
        list(device_ids))


async def find(con: asyncpg.Connection, device_id: str) -> asyncpg.Record | None:
    """``id, device_id, region, stream`` of one device (removed ones too: their data stays readable)."""
    return await con.fetchrow("SELECT id, device_id, region, stream FROM devices WHERE device_id = $1", device_id)


async def of_stream(con: asyncpg.Connection, stream: str) -> list[dict]:
    """Every device of a stream in id order, attrs decoded (what a derive job computes over)."""
    rows = await con.fetch("SELECT id, device_id, region, stream, device_type, name, attrs::text AS attrs,"
                           " protocol_edition FROM devices WHERE stream = $1 ORDER BY id", stream)
    return [dict(r, attrs=orjson.loads(r["attrs"]) if r["attrs"] else {}) for r in rows]


async def snapshot(con: asyncpg.Connection, device_id: str) -> dict | None:
    """One row as the audit log records it (attrs decoded); None if unknown."""
    row = await con.fetchrow("SELECT device_id, region, stream, device_type, name, attrs::text AS attrs,"
                             " auto_registered FROM devices WHERE device_id = $1", device_id)
    if row is None:
        return None
    d = dict(row)
    d["attrs"] = orjson.loads(d["attrs"]) if d["attrs"] else {}
    return d


async def update(con: asyncpg.Connection, device_id: str, *, attrs: Mapping | None = None,
                 protocol_edition: int | None = None) -> None:
    """Merge ``attrs`` into a device's attributes and set, if given, the protocol edition it speaks."""
    if attrs or protocol_edition is not None:
        await con.execute("UPDATE devices SET attrs = attrs || $2::jsonb,"
                          " protocol_edition = coalesce($3::smallint, protocol_edition)"
                          " WHERE device_id = $1", device_id, json.dumps(dict(attrs or {})), protocol_edition)


async def mark_removed(con: asyncpg.Connection, device_id: str) -> bool | None:
    """Mark a device removed (the row and its data stay); returns whether it had been removed before
    (None: unknown device). Locks the row until the caller's transaction ends."""
    was_removed = await con.fetchval(
        "SELECT removed_at IS NOT NULL FROM devices WHERE device_id = $1 FOR UPDATE", device_id)
    if was_removed is False:
        await con.execute("UPDATE devices SET removed_at = now() WHERE device_id = $1", device_id)
    return was_removed


# Ingest's per-batch "last seen": never moves back; ids sorted by the caller's batch (a fixed lock order,
# so concurrent writers cannot deadlock).
_LAST_SEEN = """
UPDATE devices d SET last_seen = GREATEST(d.last_seen, timestamptz 'epoch' + (v.ts_ns / 1000) * interval '1 microsecond')
FROM unnest($1::integer[], $2::bigint[]) AS v(id, ts_ns) WHERE d.id = v.id"""


async def touch_last_seen(con: asyncpg.Connection, last_seen: Mapping[int, int]) -> None:
    """Advance ``last_seen`` of registry ids to the given ns times (inside the batch's transaction)."""
    ids = sorted(last_seen)
    await con.execute(_LAST_SEEN, ids, [last_seen[i] for i in ids])
