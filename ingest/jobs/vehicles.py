"""两客一危 job: vehicle rules over each vehicle's recent track, violations upserted on (vehicle, rule, aux,
start), alerts that follow each violation, JT/T 808 terminal alarm bits as alerts, and regulator KPIs per
enterprise, region and China day.

Each rule applies to the vehicle classes core.vehicles.regulations gives it, plus what the deployment's
local rules add (settings ``vehicle_rule_classes``, ``night_bans``). Alarm bits are read with each
position's JT/T 808 edition (``vehicle_positions.protocol_edition``), else the vehicle's
(``devices.protocol_edition``), else the default (2019, for JSON telemetry).

Each run reads positions from ``watermark - context`` to ``now - lag``: the context (25 h by default)
gives the driving/rest state machine and the 24 h rule their history, so a violation that started before
the watermark is found again with the same start and only updated. KPIs are recomputed for every China
day the run touched, from the stored violations of those days.
"""
from __future__ import annotations

from datetime import datetime

import asyncpg
import numpy as np
import orjson

from wulian.core.const import Stream
from wulian.core.numbers import finite_or_none as finite
from wulian.core.timebase import NS_PER_HOUR as _HOUR
from wulian.core.timebase import as_china, dt_to_ns
from wulian.core.timebase import china_day, day_date, day_start_ns
from wulian.core.vehicles.jt808_bits import Clear, bit_of
from wulian.core.vehicles.kpi import KpiParams, day_stats, group_kpis, kpi_records
from wulian.core.vehicles.regulations import CLASS_NAMES, VehicleClass
from wulian.core.vehicles.rules import Events, Fleet, Geometry, Rule, RuleParams, Tracks, detect
from wulian.core.vehicles.system_rules import CRITICAL_BITS, RULES
from wulian.ingest import device_store
from wulian.ingest.alert_store import AlertCounts, sync_alert, target_of
from wulian.ingest.device_store import DeviceRef
from wulian.ingest.jobs.base import SpanJob
from wulian.ingest.jobs.binary_copy import fetch_columns
from wulian.ingest.jobs.sql import TS_US, US_OF, existing_open, us


_KPI_RULES = (Rule.OVERSPEED, Rule.FATIGUE, Rule.NIGHT_COACH)
UNASSIGNED = "(unassigned)"

_UPSERT = f"""
INSERT INTO vehicle_violations (device, rule, aux, start_time, end_time, value, open, details)
SELECT d, r, a, {TS_US.format('s')}, {TS_US.format('e')}, v, o, x::jsonb
FROM unnest($1::int4[], $2::text[], $3::int4[], $4::int8[], $5::int8[], $6::float8[], $7::bool[], $8::text[])
     AS u(d, r, a, s, e, v, o, x)
ON CONFLICT (device, rule, aux, start_time) DO UPDATE SET end_time = EXCLUDED.end_time, value = EXCLUDED.value,
    open = EXCLUDED.open, details = EXCLUDED.details, updated_at = now()
WHERE (vehicle_violations.end_time, vehicle_violations.value, vehicle_violations.open)
      IS DISTINCT FROM (EXCLUDED.end_time, EXCLUDED.value, EXCLUDED.open)"""

_KPI_UPSERT = """
INSERT INTO vehicle_kpis (day, region, scope, grp, registered, networked, online, network_rate, online_rate,
    track_completeness, valid_rate, drift_rate, drift_point_rate, overspeed_count, fatigue_hours, night_violations)
SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], $7::int4[],
    $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::float8[], $13::float8[], $14::int4[],
    $15::float8[], $16::int4[])
ON CONFLICT (day, region, scope, grp) DO UPDATE SET registered = EXCLUDED.registered,
    networked = EXCLUDED.networked, online = EXCLUDED.online, network_rate = EXCLUDED.network_rate,
    online_rate = EXCLUDED.online_rate, track_completeness = EXCLUDED.track_completeness,
    valid_rate = EXCLUDED.valid_rate, drift_rate = EXCLUDED.drift_rate,
    drift_point_rate = EXCLUDED.drift_point_rate, overspeed_count = EXCLUDED.overspeed_count,
    fatigue_hours = EXCLUDED.fatigue_hours, night_violations = EXCLUDED.night_violations, updated_at = now()"""


def _iso_ns(text) -> int | None:
    """ISO 8601 instant -> ns; without an offset it is China time (how permits are written)."""
    try:
        dt = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return dt_to_ns(as_china(dt))


def build_fleet(rows: list, routes: dict[str, int]) -> tuple[Fleet, list[tuple[str, str]], list[str]]:
    """Fleet columns from registry rows (id, device_id, region, attrs[, protocol_edition]); returns the
    fleet, the (region, enterprise) group of each enterprise key and the region of each region key."""
    n = len(rows)
    vclass = np.zeros(n, np.int32)
    night_ban = np.zeros(n, bool)
    route = np.full(n, -1, np.int32)
    ex_from = np.zeros(n, np.int64)
    ex_to = np.zeros(n, np.int64)
    ent = np.zeros(n, np.int32)
    reg = np.zeros(n, np.int32)
    networked = np.ones(n, bool)
    edition = np.zeros(n, np.int16)
    ent_keys: dict[tuple[str, str], int] = {}
    reg_keys: dict[str, int] = {}
    for i, r in enumerate(rows):
        a = r["attrs"]
        vclass[i] = CLASS_NAMES.get(str(a.get("vehicle_class", "coach_line")), -1)
        night_ban[i] = bool(a.get("night_ban", vclass[i] == VehicleClass.COACH_LINE))
        route[i] = routes.get(a.get("route"), -1) if a.get("route") else -1
        ex = a.get("night_exempt")
        if isinstance(ex, (list, tuple)) and len(ex) == 2:
            f, t = _iso_ns(ex[0]), _iso_ns(ex[1])
            if f is not None and t is not None:
                ex_from[i], ex_to[i] = f, t
        networked[i] = bool(a.get("networked", True))
        edition[i] = r.get("protocol_edition") or 0
        ent[i] = ent_keys.setdefault((r["region"], str(a.get("enterprise") or UNASSIGNED)), len(ent_keys))
        reg[i] = reg_keys.setdefault(r["region"], len(reg_keys))
    fleet = Fleet(vclass, night_ban, route, ex_from, ex_to, ent, reg, networked, edition)
    return fleet, list(ent_keys), list(reg_keys)


class VehicleJob(SpanJob):
    name = "vehicles"

    def __init__(self, interval_s: float = 60.0, lag_s: float = 120.0, context_h: float = 25.0,
                 backfill_h: float = 48.0, max_span_h: float = 24.0, params: RuleParams = RuleParams(),
                 kpi_params: KpiParams = KpiParams()) -> None:
        self.interval_s = interval_s
        self.lag_ns = int(lag_s * 1e9)
        self.context_ns = int(context_h * _HOUR)
        self.backfill_ns = int(backfill_h * _HOUR)
        self.max_span_ns = int(max_span_h * _HOUR)
        self.params = params
        self.kpi_params = kpi_params

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        rows = await device_store.of_stream(con, Stream.VEHICLE.value)
        if not rows:
            return {"vehicles": 0}
        fences = await con.fetch("SELECT id, name, kind, points FROM geofences WHERE enabled ORDER BY id")
        polys = [(f["id"], orjson.loads(f["points"])) for f in fences if f["kind"] == "restricted"]
        routes = [(f["id"], f["name"], orjson.loads(f["points"])) for f in fences if f["kind"] == "route"]
        geometry = Geometry.build([[tuple(p) for p in pts] for _, pts in polys if len(pts) >= 3],
                                  [[tuple(p) for p in pts] for _, _, pts in routes if len(pts) >= 2])
        poly_ids = [i for i, pts in polys if len(pts) >= 3]
        route_ids = [i for i, _, pts in routes if len(pts) >= 2]
        fleet, ent_groups, reg_groups = build_fleet(
            rows, {name: k for k, (_, name, _) in enumerate(r for r in routes if len(r[2]) >= 2)})
        index = {r["id"]: i for i, r in enumerate(rows)}
        refs = [DeviceRef(r["id"], r["device_id"], r["region"], r["stream"]) for r in rows]

        # KPI days: every China day the run touched; the fetch reaches back to the context or the first
        # such day's midnight, whichever is earlier.
        day_first, day_last = china_day(wm_ns), china_day(end_ns - 1)
        t_from = min(wm_ns - self.context_ns, day_start_ns(day_first))
        cols = await fetch_columns(con, f"""
            SELECT p.device, {US_OF.format('p.time')}, p.lat, p.lon, p.speed_kmh::float8, p.alarm_bits,
                   p.status_bits, coalesce(p.protocol_edition, 0)::int4
            FROM vehicle_positions p JOIN devices d ON d.id = p.device
            WHERE d.stream = 'vehicle' AND p.time >= {TS_US.format('$1::int8')} AND p.time < {TS_US.format('$2::int8')}
            """, (t_from // 1000, end_ns // 1000),
            [("device", "i4"), ("t", "i8"), ("lat", "f8"), ("lon", "f8"), ("speed", "f8"), ("alarm", "i8"),
             ("status", "i8"), ("edition", "i4")])
        lut = np.full(max(index) + 1, -1, np.int64)
        lut[list(index)] = list(index.values())
        dev = cols["device"].astype(np.int64)
        veh = np.where(dev < len(lut), lut[np.minimum(dev, len(lut) - 1)], -1)  # devices newer than the list: -1
        keep = veh >= 0
        tracks = Tracks.from_unsorted(veh[keep], len(rows), cols["t"][keep] * 1000, cols["lat"][keep],
                                      cols["lon"][keep], cols["speed"][keep], cols["alarm"][keep], cols["status"][keep],
                                      cols["edition"][keep])
        events = detect(tracks, fleet, geometry, self.params)
        counts = AlertCounts()
        # An episode at a vehicle's first point of the window may have begun before it, if the vehicle
        # reported before the window (within the context: state does not carry over longer silences).
        first = np.where(np.diff(tracks.starts) > 0, tracks.ts_ns[np.minimum(tracks.starts[:-1], len(tracks) - 1)]
                         if len(tracks) else 0, np.iinfo(np.int64).max)
        before = {r["id"] for r in await con.fetch(
            f"""SELECT d.id FROM devices d WHERE d.stream = 'vehicle' AND EXISTS (
                    SELECT 1 FROM vehicle_positions p WHERE p.device = d.id
                    AND p.time < {TS_US.format('$1::int8')} AND p.time >= {TS_US.format('$2::int8')})""",
            t_from // 1000, (t_from - self.context_ns) // 1000)}
        cut_at = np.where([r["id"] in before for r in rows], first, np.iinfo(np.int64).min)
        written = await self._store_events(con, events, refs, poly_ids, route_ids, cut_at, counts)
        kpi_rows = await self._kpis(con, tracks, fleet, ent_groups, reg_groups, rows, day_first, day_last)
        return {"positions": int(len(tracks)), "vehicles": len(rows), "events": int(len(events)),
                "violations_written": written, "kpi_rows": kpi_rows, **counts.as_dict()}

    async def _store_events(self, con, ev: Events, refs: list[DeviceRef], poly_ids, route_ids, cut_at: np.ndarray,
                            counts: AlertCounts) -> int:
        """Upsert the episodes and move their alerts. ``cut_at``: per vehicle, the first point of the
        window if the vehicle reported before it, else the minimum int64 (nothing was cut).

        An episode starting at ``cut_at`` may have begun earlier (its start is where the window began),
        and a 24 h episode needs a full day of history before its start: those may only update a row
        found earlier. Every other episode is inserted if new, whether it started before the watermark
        or not: overspeed, parking, route deviation and offline displacement are only known some time
        after they start."""
        if len(ev) == 0:
            return 0
        recs = []
        for v, r, t0, t1, val, aux, op in zip(ev.vehicle.tolist(), ev.rule.tolist(), ev.start_ns.tolist(),
                                              ev.end_ns.tolist(), ev.value.tolist(), ev.aux.tolist(), ev.open.tolist()):
            rule = Rule(r)
            details: dict = {}
            metric = ""
            if rule is Rule.TERMINAL_ALARM:
                edition = int(val)  # the kernel's value for a terminal alarm: the edition its bit was read in
                bit = bit_of(aux, edition)
                details = {"bit": aux, "alarm": bit.name if bit else f"bit{aux}", "edition": edition,
                           "name_zh": bit.name_zh if bit else None, "clear": str(bit.clear) if bit else None}
                metric = f"jt808.{details['alarm']}"
                val = None
            elif rule is Rule.GEOFENCE:
                aux = poly_ids[aux]
                details = {"geofence": aux}
                metric = f"geofence.{aux}"
            elif rule is Rule.ROUTE_DEVIATION:
                aux = route_ids[aux]
                details = {"route": aux}
            recs.append((refs[v], rule, int(aux), t0, t1, val, op, details, metric))
        keys = [(ref.id, rule.name.lower(), aux, t0 // 1000) for ref, rule, aux, t0, *_ in recs]
        known = await existing_open(con, "vehicle_violations", ("device", "rule", "aux", "start_time"),
                                    ("int4", "text", "int4", "int8"), keys)
        take = []
        for i, k in enumerate(keys):
            rule, t0 = recs[i][1], recs[i][3]
            cut = int(cut_at[ev.vehicle[i]])
            whole = t0 > cut and (rule is not Rule.FATIGUE_24H or cut == np.iinfo(np.int64).min
                                  or t0 >= cut + 24 * _HOUR)
            if whole or k in known:
                take.append(i)
        if not take:
            return 0
        await con.execute(_UPSERT, [recs[i][0].id for i in take], [keys[i][1] for i in take],
                          [recs[i][2] for i in take], [keys[i][3] for i in take], us([recs[i][4] for i in take]),
                          [finite(recs[i][5]) for i in take], [bool(recs[i][6]) for i in take],
                          [orjson.dumps(recs[i][7]).decode() for i in take])
        for i in sorted(take, key=lambda j: recs[j][3]):
            ref, rule, aux, t0, t1, val, op, details, metric = recs[i]
            srule = RULES[rule]
            title, severity = None, None
            if rule is Rule.TERMINAL_ALARM:
                name = details["alarm"]
                severity = "critical" if name in CRITICAL_BITS else srule.severity
                need = " (cleared after the platform answers)" if details["clear"] == Clear.ANSWER else ""
                title = f"终端报警 {details['name_zh'] or name} ({name}){need}"
            await sync_alert(con, target_of(srule, ref, metric, title, severity), srule, inserted=keys[i] not in known,
                             was_open=known.get(keys[i]), open_=bool(op), start_ns=t0, end_ns=t1,
                             value=None if rule is Rule.TERMINAL_ALARM else val, counts=counts)
        return len(take)

    async def _kpis(self, con, tracks: Tracks, fleet: Fleet, ent_groups, reg_groups, rows, day_first: int,
                    day_last: int) -> int:
        n_days = day_last - day_first + 1
        stats = day_stats(tracks, day_first, n_days, self.kpi_params)
        got = await fetch_columns(con, f"""
            SELECT device, CASE rule WHEN 'overspeed' THEN {int(Rule.OVERSPEED)} WHEN 'fatigue' THEN
                   {int(Rule.FATIGUE)} ELSE {int(Rule.NIGHT_COACH)} END, {US_OF.format('start_time')},
                   {US_OF.format('end_time')}
            FROM vehicle_violations WHERE rule IN ('overspeed', 'fatigue', 'night_coach')
              AND start_time >= {TS_US.format('$1::int8')} AND start_time < {TS_US.format('$2::int8')}""",
            (day_start_ns(day_first) // 1000, day_start_ns(day_last + 1) // 1000),
            [("device", "i4"), ("rule", "i4"), ("s", "i8"), ("e", "i8")])
        index = {r["id"]: i for i, r in enumerate(rows)}
        veh = np.array([index.get(d, -1) for d in got["device"].tolist()], np.int64)
        ok = veh >= 0
        m = len(veh[ok])
        events = Events(veh[ok].astype(np.int32), got["rule"][ok], got["s"][ok] * 1000, got["e"][ok] * 1000,
                        np.zeros(m), np.zeros(m, np.int64), np.zeros(m, bool))
        out = []
        for scope, by, groups in (("enterprise", "enterprise", ent_groups), ("region", "region", reg_groups)):
            k = group_kpis(stats, fleet, events, by=by, utc_offset_ns=self.kpi_params.utc_offset_ns)
            for rec in kpi_records(k, groups):
                region, grp = rec["group"] if scope == "enterprise" else (rec["group"], rec["group"])
                out.append((day_date(rec["day"]), region, scope, grp, rec))
        cols = ("registered", "networked", "online", "network_rate", "online_rate", "track_completeness",
                "valid_rate", "drift_rate", "drift_point_rate", "overspeed_count", "fatigue_hours", "night_violations")
        await con.execute(_KPI_UPSERT, [o[0] for o in out], [o[1] for o in out], [o[2] for o in out],
                          [o[3] for o in out], *[[o[4][c] for o in out] for c in cols])
        return len(out)


def create(settings) -> VehicleJob:
    """The job with the deployment's local rules (ValueError naming a bad rule, class or window)."""
    e = settings.energy
    return VehicleJob(interval_s=e.vehicles_interval_s, lag_s=e.lag_s, context_h=e.vehicle_context_h,
                      backfill_h=e.backfill_h, max_span_h=e.max_span_h,
                      params=RuleParams().with_local(e.vehicle_rule_classes, e.night_bans))
