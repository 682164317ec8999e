"""两客一危 vehicle rules: parameters, fleet and geometry tables, and the call into the numba kernel.

``detect(tracks, fleet, geometry, params)`` runs every rule over a batch of positions (typically the last
day or more per vehicle) and returns ``Events``, struct-of-arrays, one row per violation/alert. Which rule
applies to which vehicle class is core.vehicles.regulations; ``detect`` resolves it per vehicle.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from wulian.core.kernels import vehicle_rules as k
from wulian.core.vehicles.jt808_bits import DEFAULT_EDITION, EDITIONS, bit_of, mask_for
from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_HOUR, NS_PER_MIN
from wulian.core.vehicles.regulations import VehicleClass, class_of, local_scope, scope



class Rule(IntEnum):
    OVERSPEED = k.R_OVERSPEED
    FATIGUE = k.R_FATIGUE
    FATIGUE_24H = k.R_FATIGUE_24H
    NIGHT_COACH = k.R_NIGHT_COACH
    OFFLINE_JUMP = k.R_OFFLINE_JUMP
    GEOFENCE = k.R_GEOFENCE
    ROUTE_DEVIATION = k.R_ROUTE_DEVIATION
    OVERTIME_PARKING = k.R_OVERTIME_PARKING
    TERMINAL_ALARM = k.R_TERMINAL_ALARM
    NIGHT_BAN = k.R_NIGHT_BAN


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_window(text: str) -> tuple[int, int]:
    """China-time window ``"HH:MM-HH:MM"`` -> (from, to) ns after midnight; may cross midnight."""
    m = _HHMM.match(str(text).strip())
    if not m:
        raise ValueError(f"night ban window {text!r}: expected HH:MM-HH:MM")
    h0, m0, h1, m1 = (int(g) for g in m.groups())
    lo, hi = (h0 * 60 + m0) * NS_PER_MIN, (h1 * 60 + m1) * NS_PER_MIN
    if lo == hi:
        raise ValueError(f"night ban window {text!r} is empty")
    return lo, hi


@dataclass(frozen=True, slots=True)
class RuleParams:
    """Thresholds of the national rules (core.vehicles.regulations cites each) and the local additions.

    The night rules (2 h continuous driving, 80 % of the day limit, 8 h in 24 h, the 02:00-05:00 ban) apply
    to the classes in their scope only; ``extra_scope`` adds classes where a local rule is stricter, and
    ``local_night_bans`` gives a class its own ban window (rule ``night_ban``)."""

    class_limit_kmh: tuple[tuple[int, float], ...] = (
        (VehicleClass.COACH_LINE, 100.0), (VehicleClass.COACH_CHARTER, 100.0), (VehicleClass.HAZMAT, 80.0))
    night_factor: float = 0.8  # in scope, 22:00-06:00 China time the limit is 80 % of the day limit
    overspeed_min_ns: int = 60 * 10**9  # sustained over the limit at least this long
    moving_kmh: float = 5.0  # above this the vehicle is driving (GNSS jitter stays below)
    max_gap_ns: int = 5 * NS_PER_MIN  # longer silences are judged by displacement, and break runs
    fatigue_day_ns: int = 4 * NS_PER_HOUR  # more than 4 h continuous driving (every class)
    fatigue_night_ns: int = 2 * NS_PER_HOUR  # in scope, more than 2 h at night (22:00-06:00)
    rest_min_ns: int = 20 * NS_PER_MIN  # a rest of at least 20 min resets continuous driving
    drive_24h_ns: int = 8 * NS_PER_HOUR  # in scope, more than 8 h of driving in any 24 h
    night_ban_from_ns: int = 2 * NS_PER_HOUR  # long-distance coaches stop 02:00 ...
    night_ban_to_ns: int = 5 * NS_PER_HOUR  # ... until 05:00 (exclusive)
    offline_ns: int = 10 * NS_PER_MIN  # silence longer than this ...
    offline_km: float = 2.0  # ... ending this far away is an offline displacement
    route_tol_km: float = 0.5  # farther than this from the route is a deviation ...
    route_min_ns: int = 2 * NS_PER_MIN  # ... when it lasts at least this long
    parking_max_ns: int = 2 * NS_PER_HOUR  # stopped for longer is overtime parking
    default_edition: int = DEFAULT_EDITION  # JT/T 808 table for positions and vehicles of unknown edition
    extra_scope: tuple[tuple[str, frozenset[int]], ...] = ()  # rule key -> classes a local rule adds
    local_night_bans: tuple[tuple[int, int, int], ...] = ()  # (class, from, to) China time of day, ns
    utc_offset_ns: int = CHINA_OFFSET_NS

    def __post_init__(self) -> None:
        if self.default_edition not in EDITIONS:
            raise ValueError(f"default JT/T 808 edition {self.default_edition!r}: expected one of {EDITIONS}")

    def limit_for(self, vclass: int) -> float:
        return dict(self.class_limit_kmh).get(int(vclass), 0.0)

    def scope(self, key: str) -> frozenset[int]:
        return scope(key, dict(self.extra_scope))

    def with_local(self, rule_classes: dict[str, list[str]] | None = None,
                   night_bans: dict[str, str] | None = None) -> RuleParams:
        """These parameters with a deployment's stricter local rules: ``rule_classes`` adds classes to
        a rule's scope ({"night_fatigue": ["hazmat"]}), ``night_bans`` bans a class from the road in a
        China-time window ({"hazmat": "22:00-06:00"}). ValueError on an unknown rule, class or window."""
        extra = local_scope(rule_classes or {})
        bans = tuple((int(class_of(c)), *parse_window(w)) for c, w in (night_bans or {}).items())
        return dataclasses.replace(self, extra_scope=tuple(sorted(extra.items())), local_night_bans=bans)


@dataclass(frozen=True, slots=True)
class Fleet:
    """Per-vehicle registry columns, aligned with the dense vehicle index used by the tracks.

    ``night_ban`` marks long-distance coaches under the 02:00-05:00 ban; an exemption (接驳运输 or a
    permit) is the window [exempt_from_ns, exempt_to_ns) during which the ban does not apply.
    ``route`` is an index into ``Geometry.routes`` or -1. ``edition`` is the JT/T 808 edition the
    terminal registered with (0: unknown), used for positions that do not carry their own.
    """

    vclass: np.ndarray  # int32
    night_ban: np.ndarray  # bool
    route: np.ndarray  # int32
    exempt_from_ns: np.ndarray  # int64
    exempt_to_ns: np.ndarray  # int64
    enterprise: np.ndarray  # int32 dense keys, for KPIs
    region: np.ndarray  # int32 dense keys, for KPIs
    networked: np.ndarray  # bool: terminal registered on the platform (入网)
    edition: np.ndarray | None = None  # int16 JT/T 808 edition, 0 unknown; None: all unknown

    @classmethod
    def uniform(cls, n: int, vclass: int = VehicleClass.COACH_LINE, night_ban: bool = False,
                edition: int = 0) -> Fleet:
        return cls(
            vclass=np.full(n, vclass, np.int32), night_ban=np.full(n, night_ban, bool),
            route=np.full(n, -1, np.int32), exempt_from_ns=np.zeros(n, np.int64),
            exempt_to_ns=np.zeros(n, np.int64), enterprise=np.zeros(n, np.int32),
            region=np.zeros(n, np.int32), networked=np.ones(n, bool), edition=np.full(n, edition, np.int16))

    def __len__(self) -> int:
        return len(self.vclass)


@dataclass(frozen=True, slots=True)
class Geometry:
    """Restricted polygons (hazardous goods) and fixed routes (coaches) as flat vertex arrays."""

    poly_off: np.ndarray
    poly_lat: np.ndarray
    poly_lon: np.ndarray
    poly_bbox: np.ndarray  # (n, 4): lat_min, lat_max, lon_min, lon_max
    route_off: np.ndarray
    route_lat: np.ndarray
    route_lon: np.ndarray
    route_kx: np.ndarray  # km per degree of longitude at each route's mean latitude

    @classmethod
    def build(cls, polygons: list[list[tuple[float, float]]] = (), routes: list[list[tuple[float, float]]] = ()
              ) -> Geometry:
        """``polygons`` and ``routes`` as lists of (lat, lon) vertex lists (polygons implicitly closed)."""
        def flat(items):
            off = np.zeros(len(items) + 1, np.int64)
            off[1:] = np.cumsum([len(x) for x in items]) if items else []
            pts = np.array([p for x in items for p in x], np.float64).reshape(-1, 2)
            return off, np.ascontiguousarray(pts[:, 0]), np.ascontiguousarray(pts[:, 1])

        p_off, p_lat, p_lon = flat(list(polygons))
        r_off, r_lat, r_lon = flat(list(routes))
        bbox = np.array([[min(a for a, _ in x), max(a for a, _ in x), min(b for _, b in x), max(b for _, b in x)]
                         for x in polygons], np.float64).reshape(-1, 4)
        kx = np.array([6371.0088 * np.pi / 180 * np.cos(np.radians(np.mean([a for a, _ in x]))) for x in routes],
                      np.float64)
        return cls(p_off, p_lat, p_lon, bbox, r_off, r_lat, r_lon, kx)


@dataclass(frozen=True, slots=True)
class Tracks:
    """Positions sorted by (vehicle, time); vehicle v owns rows starts[v]:starts[v + 1]. ``edition`` is
    the JT/T 808 edition of each row's frame (0 or None: unknown, e.g. JSON telemetry)."""

    starts: np.ndarray  # int64, n_vehicles + 1
    ts_ns: np.ndarray  # int64
    lat: np.ndarray
    lon: np.ndarray
    speed_kmh: np.ndarray
    alarm_bits: np.ndarray  # int64 (JT/T 808 DWORD)
    status_bits: np.ndarray  # int64
    edition: np.ndarray | None = None  # int16

    @property
    def n_vehicles(self) -> int:
        return len(self.starts) - 1

    def __len__(self) -> int:
        return len(self.ts_ns)

    @classmethod
    def from_unsorted(cls, vehicle: np.ndarray, n_vehicles: int, ts_ns, lat, lon, speed_kmh,
                      alarm_bits=None, status_bits=None, edition=None) -> Tracks:
        """Group rows by dense vehicle index (stable sort by vehicle, then time)."""
        order = np.lexsort((ts_ns, vehicle))
        counts = np.bincount(vehicle, minlength=n_vehicles)
        starts = np.zeros(n_vehicles + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        zeros = np.zeros(len(ts_ns), np.int64)
        return cls(starts, np.asarray(ts_ns, np.int64)[order], np.asarray(lat, np.float64)[order],
                   np.asarray(lon, np.float64)[order], np.asarray(speed_kmh, np.float64)[order],
                   np.asarray(zeros if alarm_bits is None else alarm_bits, np.int64)[order],
                   np.asarray(zeros if status_bits is None else status_bits, np.int64)[order],
                   np.asarray(zeros if edition is None else edition, np.int16)[order])


@dataclass(frozen=True, slots=True)
class Events:
    """Violations and alerts as parallel arrays. ``open`` is True when the condition still held at the
    end of the batch (the event may continue in later data). ``value`` depends on the rule (see
    core.kernels.vehicle_rules; for terminal alarms the JT/T 808 edition whose table names the bit);
    ``aux`` is the polygon, route or alarm bit."""

    vehicle: np.ndarray
    rule: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    value: np.ndarray
    aux: np.ndarray
    open: np.ndarray

    def __len__(self) -> int:
        return len(self.vehicle)

    def records(self, vehicle_ids=None) -> list[dict]:
        """Plain rows for storage/API: rule name, times, value, and for terminal alarms the bit's name
        and clear rule in the edition it was read with (``cleared_after_answer`` bits stay set until the
        platform answers)."""
        out = []
        for v, r, t0, t1, val, aux, op in zip(self.vehicle.tolist(), self.rule.tolist(), self.start_ns.tolist(),
                                              self.end_ns.tolist(), self.value.tolist(), self.aux.tolist(),
                                              self.open.tolist()):
            row = {"vehicle": vehicle_ids[v] if vehicle_ids is not None else v, "rule": Rule(r).name.lower(),
                   "start_ns": t0, "end_ns": t1, "value": val, "aux": aux, "open": op}
            if r == Rule.TERMINAL_ALARM:
                bit = bit_of(aux, int(val))
                row["alarm"] = bit.name if bit else f"bit{aux}"
                row["clear"] = str(bit.clear) if bit else None
            out.append(row)
        return out

    def of(self, rule: Rule) -> Events:
        m = self.rule == rule
        return Events(*(getattr(self, f)[m] for f in ("vehicle", "rule", "start_ns", "end_ns", "value", "aux",
                                                      "open")))


def _empty_geometry() -> Geometry:
    return Geometry.build()


# edition -> mask of the bits its table defines; -1 where there is no table
_MASK_OF = np.full(max(EDITIONS) + 1, -1, np.int64)
_MASK_OF[list(EDITIONS)] = [mask_for(e) for e in EDITIONS]


def _bad_edition(values: np.ndarray, where: str) -> ValueError:
    bad = sorted(set(np.unique(values).tolist()) - set(EDITIONS) - {0})
    return ValueError(f"JT/T 808 edition {bad[0] if bad else '?'} in the {where}: expected one of {EDITIONS}")


def _in_scope(vclass: np.ndarray, classes: frozenset[int]) -> np.ndarray:
    return np.isin(vclass, np.array(sorted(classes), np.int64))


def detect(tracks: Tracks, fleet: Fleet, geometry: Geometry | None = None,
           params: RuleParams = RuleParams(), capacity: int | None = None) -> Events:
    """Run all vehicle rules over ``tracks``; see core.kernels.vehicle_rules.vehicle_rules.

    Per vehicle, each class-scoped rule is on or off by ``params.scope`` (core.vehicles.regulations).
    Each row's alarm bits are read with its own edition's table: the row's edition, else its vehicle's
    (``Fleet.edition``), else ``params.default_edition``."""
    g = geometry if geometry is not None else _empty_geometry()
    nv = tracks.n_vehicles
    if len(fleet) != nv:
        raise ValueError(f"fleet has {len(fleet)} vehicles, tracks {nv}")
    limits = np.array([params.limit_for(c) for c in range(3)], np.float64)
    vclass = np.asarray(fleet.vclass, np.int64)
    day_limit = np.where((vclass >= 0) & (vclass < 3), limits[np.clip(vclass, 0, 2)], 0.0)
    vflags = np.where(_in_scope(vclass, params.scope("geofence")), k.VF_HAZMAT, 0).astype(np.int32)
    night_factor = np.where(_in_scope(vclass, params.scope("night_speed")), params.night_factor, 1.0)
    fatigue_night = np.where(_in_scope(vclass, params.scope("night_fatigue")), params.fatigue_night_ns,
                             params.fatigue_day_ns).astype(np.int64)
    drive_24h = np.where(_in_scope(vclass, params.scope("fatigue_24h")), params.drive_24h_ns, 0).astype(np.int64)
    coach_ban = np.asarray(fleet.night_ban, bool) & _in_scope(vclass, params.scope("night_coach"))
    ban_from = np.where(coach_ban, params.night_ban_from_ns, -1).astype(np.int64)
    ban_to = np.where(coach_ban, params.night_ban_to_ns, -1).astype(np.int64)
    local_from = np.full(nv, -1, np.int64)
    local_to = np.full(nv, -1, np.int64)
    for c, lo, hi in params.local_night_bans:
        local_from[vclass == c], local_to[vclass == c] = lo, hi
    row_ed = np.zeros(len(tracks), np.int16) if tracks.edition is None else np.asarray(tracks.edition, np.int16)
    veh_ed = np.zeros(nv, np.int16) if fleet.edition is None else np.asarray(fleet.edition, np.int16)
    if not np.isin(veh_ed, (0, *EDITIONS)).all():
        raise _bad_edition(veh_ed, "fleet")
    route = np.asarray(fleet.route, np.int32)
    cap = capacity if capacity is not None else max(1024, len(tracks) // 200)
    while True:
        out = (np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(cap, np.int64),
               np.empty(cap, np.int64), np.empty(cap, np.float64), np.empty(cap, np.int64),
               np.empty(cap, np.int8))
        try:
            n = k.vehicle_rules(
                tracks.starts, tracks.ts_ns, tracks.lat, tracks.lon, tracks.speed_kmh, tracks.alarm_bits, row_ed,
                day_limit, vflags, np.asarray(fleet.exempt_from_ns, np.int64),
                np.asarray(fleet.exempt_to_ns, np.int64), route, veh_ed,
                night_factor, fatigue_night, drive_24h, ban_from, ban_to, local_from, local_to,
                g.poly_off, g.poly_lat, g.poly_lon, g.poly_bbox, g.route_off, g.route_lat, g.route_lon, g.route_kx,
                params.utc_offset_ns, params.moving_kmh, params.max_gap_ns, params.overspeed_min_ns,
                params.fatigue_day_ns, params.rest_min_ns, params.offline_ns, params.offline_km,
                params.route_tol_km, params.route_min_ns, params.parking_max_ns, params.default_edition, _MASK_OF,
                *out)
        except ValueError:  # the kernel met a row edition without a table: say which
            raise _bad_edition(row_ed, "tracks") from None
        if n <= cap:
            v, r, t0, t1, val, aux, op = (a[:n] for a in out)
            return Events(v, r, t0, t1, val, aux, op.astype(bool))
        cap = n


def warm() -> None:
    """Compile the kernels on tiny inputs so the first real batch does not pay for it."""
    t = np.array([0, 10 * 10**9], np.int64)
    tr = Tracks(np.array([0, 2], np.int64), t, np.array([30.0, 30.001]), np.array([120.0, 120.0]),
                np.array([50.0, 50.0]), np.zeros(2, np.int64), np.zeros(2, np.int64))
    f = Fleet.uniform(1)
    g = Geometry.build([[(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]], [[(30.0, 120.0), (30.1, 120.1)]])
    detect(tr, f, g)
