"""两客一危 rules at their boundaries, geometry kernels, and KPI formulas on hand-checked tracks."""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from wulian.core.timebase import CHINA_TZ as CN
from wulian.core.timebase import china_day
from wulian.core.kernels import vehicle_rules as k
from wulian.core.vehicles import jt808_bits
from wulian.core.vehicles.kpi import day_stats, day_stats_numpy, group_kpis
from wulian.core.vehicles.regulations import COACHES, REGULATIONS, VehicleClass
from wulian.core.vehicles.rules import Events, Fleet, Geometry, Rule, RuleParams, Tracks, detect

S = 10**9
MIN = 60 * S
H = 3600 * S
DAY0 = datetime(2026, 11, 26, tzinfo=CN)  # 00:00 China time
KM_PER_DEG = 6371.0088 * math.pi / 180


def at(hh: int, mm: int = 0, ss: int = 0, day: int = 0) -> int:
    return int((DAY0 + timedelta(days=day, hours=hh, minutes=mm, seconds=ss)).timestamp()) * S


class Builder:
    """One vehicle's track at 10-second steps, driving due north from (30, 120)."""

    def __init__(self, t0: int, lat: float = 30.0, lon: float = 120.0, step_s: int = 10):
        self.t, self.lat, self.lon, self.step = t0, lat, lon, step_s * S
        self.rows: list[tuple] = []

    def seg(self, duration_ns: int, speed: float, alarm: int = 0, lon_drift: float = 0.0) -> Builder:
        """Points at [t, t + duration) with this speed; position advances accordingly."""
        for _ in range(duration_ns // self.step):
            self.rows.append((self.t, self.lat, self.lon, speed, alarm))
            self.lat += speed * (self.step / H) / KM_PER_DEG
            self.lon += lon_drift
            self.t += self.step
        return self

    def jump(self, gap_ns: int, dlat: float = 0.0) -> Builder:
        self.t += gap_ns
        self.lat += dlat
        return self

    def point(self, speed: float = 0.0, alarm: int = 0) -> Builder:
        self.rows.append((self.t, self.lat, self.lon, speed, alarm))
        self.t += self.step
        return self


def tracks_of(*builders: Builder, editions=None) -> Tracks:
    """``editions``: one JT/T 808 edition per builder for all its rows (0: unknown), or None."""
    rows = [(v, *r) for v, b in enumerate(builders) for r in b.rows]
    a = np.array(rows, dtype=np.float64) if rows else np.zeros((0, 6))
    ts = np.array([r[1] for r in rows], np.int64)
    ed = None if editions is None else np.array([editions[r[0]] for r in rows], np.int16)
    return Tracks.from_unsorted(a[:, 0].astype(np.int64), len(builders), ts, a[:, 2], a[:, 3], a[:, 4],
                                np.array([r[5] for r in rows], np.int64), None, ed)


def run(builders, fleet=None, geometry=None, **params) -> Events:
    tr = tracks_of(*builders)
    return detect(tr, fleet or Fleet.uniform(len(builders)), geometry, RuleParams(**params))


# ---------------------------------------------------------------- geometry

def test_haversine_one_degree_of_latitude():
    assert k.haversine_km(30.0, 120.0, 31.0, 120.0) == pytest.approx(111.195, abs=0.01)
    assert k.haversine_km(0.0, 0.0, 0.0, 0.0) == 0.0
    many = k.haversine_many(np.array([30.0, 0.0]), np.array([120.0, 0.0]), np.array([31.0, 0.0]),
                            np.array([120.0, 1.0]))
    assert many == pytest.approx([111.195, 111.195], abs=0.01)
    # Beijing - Shanghai, about 1067 km.
    assert k.haversine_km(39.9042, 116.4074, 31.2304, 121.4737) == pytest.approx(1067, rel=0.01)


SQUARE = np.array([30.0, 30.0, 30.1, 30.1]), np.array([120.0, 120.1, 120.1, 120.0])


@pytest.mark.parametrize("lat,lon,inside", [
    (30.05, 120.05, True),
    (30.0, 120.05, True),  # on the south edge
    (30.05, 120.1, True),  # on the east edge
    (30.1, 120.1, True),  # on a vertex
    (29.99999, 120.05, False),  # just outside the south edge
    (30.05, 120.10001, False),
    (30.2, 120.05, False),
])
def test_point_in_polygon_edges(lat, lon, inside):
    plat, plon = SQUARE
    assert k.point_in_polygon(lat, lon, plat, plon, 0, 4) is inside


def test_point_in_concave_polygon():
    # U shape: the notch (30.05..30.1 lat, 120.03..120.07 lon) is outside.
    plat = np.array([30.0, 30.0, 30.1, 30.1, 30.05, 30.05, 30.1, 30.1])
    plon = np.array([120.0, 120.1, 120.1, 120.07, 120.07, 120.03, 120.03, 120.0])
    assert not k.point_in_polygon(30.08, 120.05, plat, plon, 0, 8)
    assert k.point_in_polygon(30.02, 120.05, plat, plon, 0, 8)
    assert k.point_in_polygon(30.08, 120.01, plat, plon, 0, 8)


def test_distance_to_polyline():
    plat = np.array([30.0, 30.0, 30.1])
    plon = np.array([120.0, 120.1, 120.1])
    # 0.01 deg north of the first segment's middle: 1.11 km.
    assert k.distance_to_polyline_km(30.01, 120.05, plat, plon) == pytest.approx(1.112, abs=0.005)
    # Beyond the end vertex: distance to that vertex.
    d = k.distance_to_polyline_km(30.1, 120.11, plat, plon)
    assert d == pytest.approx(k.haversine_km(30.1, 120.11, 30.1, 120.1), rel=0.01)
    assert k.distance_to_polyline_km(30.05, 120.1, plat, plon) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- fatigue

def _fatigue(ev: Events) -> Events:
    return ev.of(Rule.FATIGUE)


def test_fatigue_day_4h_is_allowed_4h_1min_is_not():
    ok = Builder(at(8)).seg(4 * H, 60).seg(30 * MIN, 0)
    bad = Builder(at(8)).seg(4 * H + MIN, 60).seg(30 * MIN, 0)
    ev = run([ok, bad])
    f = _fatigue(ev)
    assert list(f.vehicle) == [1]
    assert f.start_ns[0] == at(12, 0, 10)  # first point past 4 h of driving
    assert f.end_ns[0] == at(12, 1)  # the rest starts when the last moving interval ends
    assert f.value[0] == pytest.approx((4 * H + MIN) / H)
    assert not f.open[0]


def test_fatigue_night_2h_limit():
    ok = Builder(at(23)).seg(2 * H, 60).seg(30 * MIN, 0)
    bad = Builder(at(23)).seg(2 * H + MIN, 60).seg(30 * MIN, 0)
    f = _fatigue(run([ok, bad]))
    assert list(f.vehicle) == [1]


def test_rest_19_minutes_does_not_reset_20_does():
    short = Builder(at(8)).seg(3 * H, 60).seg(19 * MIN, 0).seg(H + MIN, 60).seg(30 * MIN, 0)
    rest = Builder(at(8)).seg(3 * H, 60).seg(20 * MIN, 0).seg(H + MIN, 60).seg(30 * MIN, 0)
    f = _fatigue(run([short, rest]))
    assert list(f.vehicle) == [0]
    # The short stop neither resets nor counts: continuous driving is 3 h + 1 h 1 min.
    assert f.value[0] == pytest.approx(4 + 1 / 60)


def test_fatigue_event_still_open_at_end_of_data():
    f = _fatigue(run([Builder(at(8)).seg(5 * H, 60)]))
    assert len(f) == 1 and f.open[0]


def test_24h_driving_over_8h():
    def stints(n_hours_last: int) -> Builder:
        b = Builder(at(6))
        for _ in range(2):
            b.seg(3 * H, 60).seg(30 * MIN, 0)
        return b.seg(n_hours_last, 60).seg(30 * MIN, 0)

    ev = run([stints(2 * H), stints(2 * H + MIN)])
    d24 = ev.of(Rule.FATIGUE_24H)
    assert list(d24.vehicle) == [1]
    assert d24.value[0] == pytest.approx(8 + 1 / 60)
    assert len(ev.of(Rule.FATIGUE)) == 0


# ---------------------------------------------------------------- overspeed

def test_overspeed_sustained_boundary():
    # Limit 100 by day; 60 s sustained: 7 points 0..60 s qualify, 6 points (50 s) do not.
    long_ = Builder(at(10)).seg(MIN, 60).seg(70 * S, 101).seg(MIN, 60)
    short = Builder(at(10)).seg(MIN, 60).seg(60 * S, 101).seg(MIN, 60)
    at_limit = Builder(at(10)).seg(MIN, 60).seg(5 * MIN, 100).seg(MIN, 60)
    o = run([long_, short, at_limit]).of(Rule.OVERSPEED)
    assert list(o.vehicle) == [0]
    assert o.end_ns[0] - o.start_ns[0] == 60 * S
    assert o.value[0] == 101


def test_overspeed_night_limit_is_80_percent():
    day = Builder(at(12)).seg(5 * MIN, 85)
    night = Builder(at(23)).seg(5 * MIN, 85)
    hazmat_day = Builder(at(12)).seg(5 * MIN, 81)
    fleet = Fleet.uniform(3)
    fleet.vclass[2] = VehicleClass.HAZMAT
    o = run([day, night, hazmat_day], fleet).of(Rule.OVERSPEED)
    assert sorted(o.vehicle) == [1, 2]


def test_overspeed_night_edges_22_and_06():
    # 85 km/h from 21:58 to 22:05: over the 80 km/h night limit from 22:00:00 on.
    o = run([Builder(at(21, 58)).seg(7 * MIN, 85)]).of(Rule.OVERSPEED)
    assert o.start_ns[0] == at(22)
    o = run([Builder(at(5, 55)).seg(10 * MIN, 85)]).of(Rule.OVERSPEED)
    assert o.end_ns[0] == at(5, 59, 50)


# ---------------------------------------------------------------- rule scope by vehicle class

def test_hazmat_truck_gets_the_general_4h_rule_at_night():
    """2 h at night is the coaches' rule (道路旅客运输企业安全管理规范 第三十八条); a hazardous-goods
    truck is held to 4 h / 20 min (道路交通安全法实施条例 第六十二条第七项) at any hour."""
    fleet = Fleet.uniform(4, vclass=VehicleClass.HAZMAT)
    fleet.vclass[3] = VehicleClass.COACH_CHARTER
    three_h = Builder(at(22)).seg(3 * H, 60).seg(30 * MIN, 0)
    four_h = Builder(at(22)).seg(4 * H, 60).seg(30 * MIN, 0)
    over = Builder(at(22)).seg(4 * H + MIN, 60).seg(30 * MIN, 0)
    coach = Builder(at(22)).seg(2 * H + MIN, 60).seg(30 * MIN, 0)
    f = _fatigue(run([three_h, four_h, over, coach], fleet))
    assert sorted(f.vehicle.tolist()) == [2, 3]


def test_night_speed_and_24h_rules_are_for_coaches():
    fleet = Fleet.uniform(3, vclass=VehicleClass.HAZMAT)
    fleet.vclass[2] = VehicleClass.COACH_LINE
    truck_night = Builder(at(23)).seg(5 * MIN, 75)  # under the truck's 80, over 80 % of it
    truck_over = Builder(at(23)).seg(5 * MIN, 81)
    coach_night = Builder(at(23)).seg(5 * MIN, 85)  # over 80 % of the coach's 100
    o = run([truck_night, truck_over, coach_night], fleet).of(Rule.OVERSPEED)
    assert sorted(o.vehicle.tolist()) == [1, 2]

    def stints(b: Builder) -> Builder:  # 9 h of driving in 3 h stints with 30 min rests
        for _ in range(3):
            b.seg(3 * H, 60).seg(30 * MIN, 0)
        return b

    fleet = Fleet.uniform(2, vclass=VehicleClass.HAZMAT)
    fleet.vclass[1] = VehicleClass.COACH_CHARTER
    d24 = run([stints(Builder(at(6))), stints(Builder(at(6)))], fleet).of(Rule.FATIGUE_24H)
    assert d24.vehicle.tolist() == [1]


def test_night_coach_ban_is_not_for_hazmat_trucks():
    fleet = Fleet.uniform(2, night_ban=True)
    fleet.vclass[0] = VehicleClass.HAZMAT  # even if its registry row says night_ban
    ev = run([Builder(at(3)).seg(30 * MIN, 60), Builder(at(3)).seg(30 * MIN, 60)], fleet)
    assert ev.of(Rule.NIGHT_COACH).vehicle.tolist() == [1]


def test_local_rules_extend_the_scope():
    """A city that also holds hazmat trucks to the 2 h night rule and bans them 22:00-06:00."""
    p = RuleParams().with_local({"night_fatigue": ["hazmat"]}, {"hazmat": "22:00-06:00"})
    fleet = Fleet.uniform(3, vclass=VehicleClass.HAZMAT)
    fleet.vclass[2] = VehicleClass.COACH_LINE
    fleet.exempt_from_ns[1], fleet.exempt_to_ns[1] = at(0, day=1), at(12, day=1)  # a permit from 00:00
    bs = [Builder(at(23)).seg(2 * H + MIN, 60).seg(30 * MIN, 0) for _ in range(3)]
    ev = detect(tracks_of(*bs), fleet, None, p)
    assert sorted(ev.of(Rule.FATIGUE).vehicle.tolist()) == [0, 1, 2]
    ban = ev.of(Rule.NIGHT_BAN)
    assert ban.vehicle.tolist() == [0, 1]  # the coach has no local ban; the permit starts at 00:00
    by = {int(v): (int(s), int(e)) for v, s, e in zip(ban.vehicle, ban.start_ns, ban.end_ns)}
    assert by[0] == (at(23), at(1, 0, 50, day=1)) and by[1] == (at(23), at(23, 59, 50))
    assert len(detect(tracks_of(*bs), fleet).of(Rule.NIGHT_BAN)) == 0  # national rules only: none
    for bad, match in (({"fatigue": ["hazmat"]}, "cannot be extended"), ({"night_speed": ["truck"]}, "truck")):
        with pytest.raises(ValueError, match=match):
            RuleParams().with_local(bad)
    for window in ("25:00-06:00", "22:00", "06:00-06:00"):
        with pytest.raises(ValueError, match="night ban window"):
            RuleParams().with_local(night_bans={"hazmat": window})


def test_every_rule_has_a_scope_and_a_citation():
    keys = {r.key: r for r in REGULATIONS}
    assert {rule.name.lower() for rule in Rule} <= set(keys)
    for key in ("night_fatigue", "night_speed", "fatigue_24h", "night_coach"):
        assert keys[key].classes == COACHES and "第" in keys[key].source, key
    assert VehicleClass.HAZMAT in keys["fatigue"].classes and "第六十二条" in keys["fatigue"].source


# ---------------------------------------------------------------- 02:00-05:00 coaches

def test_night_coach_edges():
    fleet = Fleet.uniform(4, night_ban=True)
    before = Builder(at(1, 50)).seg(10 * MIN, 60).seg(20 * MIN, 0)  # last moving point 01:59:50
    from_two = Builder(at(1, 50)).seg(10 * MIN + 10 * S, 60).seg(20 * MIN, 0)  # moving at 02:00:00
    until_five = Builder(at(4, 50)).seg(20 * MIN, 60)
    after = Builder(at(5)).seg(20 * MIN, 60)
    ev = run([before, from_two, until_five, after], fleet).of(Rule.NIGHT_COACH)
    assert sorted(ev.vehicle) == [1, 2]
    by = {int(v): (s, e) for v, s, e in zip(ev.vehicle, ev.start_ns, ev.end_ns)}
    assert by[1] == (at(2), at(2))
    assert by[2] == (at(4, 50), at(4, 59, 50))


def test_night_coach_exemption_and_unbanned_vehicle():
    fleet = Fleet.uniform(3, night_ban=True)
    fleet.night_ban[2] = False
    fleet.exempt_from_ns[1] = at(0)
    fleet.exempt_to_ns[1] = at(6)
    bs = [Builder(at(3)).seg(30 * MIN, 60) for _ in range(3)]
    ev = run(bs, fleet).of(Rule.NIGHT_COACH)
    assert list(ev.vehicle) == [0]


def test_night_coach_one_event_per_night_despite_stops():
    fleet = Fleet.uniform(1, night_ban=True)
    b = Builder(at(2, 30)).seg(10 * MIN, 60).seg(10 * MIN, 0).seg(10 * MIN, 60)
    ev = run([b], fleet).of(Rule.NIGHT_COACH)
    assert len(ev) == 1 and ev.end_ns[0] == at(2, 59, 50)


# ---------------------------------------------------------------- offline, geofence, route, parking, bits

def test_offline_displacement():
    far = Builder(at(9)).seg(5 * MIN, 60).jump(15 * MIN, 0.05).seg(5 * MIN, 60)  # ~5.6 km jump
    near = Builder(at(9)).seg(5 * MIN, 60).jump(15 * MIN, 0.005).seg(5 * MIN, 60)  # ~0.6 km
    brief = Builder(at(9)).seg(5 * MIN, 60).jump(5 * MIN, 0.05).seg(5 * MIN, 60)  # silent only 5 min
    o = run([far, near, brief]).of(Rule.OFFLINE_JUMP)
    assert list(o.vehicle) == [0]
    assert o.value[0] == pytest.approx(0.05 * KM_PER_DEG + 60 * 10 / 3600, rel=0.01)


def test_unusable_fixes_and_duplicates_are_skipped():
    b = Builder(at(9)).seg(5 * MIN, 60)
    b.rows.append((b.t + 15 * MIN, 0.0, 0.0, 60.0, 0))  # (0, 0) after a silence: not a jump to the equator
    b.rows.append((b.rows[-2][0], 45.0, 125.0, 60.0, 0))  # same time as an earlier point: ignored
    b.jump(20 * MIN).seg(5 * MIN, 60)
    ev = run([b])
    assert len(ev.of(Rule.OFFLINE_JUMP)) == 0


def test_geofence_breach_only_for_hazmat():
    poly = [(30.02, 119.9), (30.02, 120.1), (30.04, 120.1), (30.04, 119.9)]
    g = Geometry.build([poly])
    fleet = Fleet.uniform(2)
    fleet.vclass[0] = VehicleClass.HAZMAT
    bs = [Builder(at(9)).seg(60 * MIN, 60) for _ in range(2)]  # 60 km/h north from 30.0 crosses the band
    ev = run(bs, fleet, g).of(Rule.GEOFENCE)
    assert list(ev.vehicle) == [0] and ev.aux[0] == 0
    # Inside from lat 30.02 to 30.04: 2.22 km at 60 km/h = 2.2 min.
    assert (ev.end_ns[0] - ev.start_ns[0]) / MIN == pytest.approx(2.2, abs=0.35)  # first/last point inside, 10 s steps


def test_route_deviation():
    route = [(29.9, 120.0), (30.5, 120.0)]
    g = Geometry.build([], [route])
    fleet = Fleet.uniform(2)
    fleet.route[:] = 0
    on = Builder(at(9)).seg(30 * MIN, 60)
    off = Builder(at(9)).seg(10 * MIN, 60).seg(10 * MIN, 60, lon_drift=0.0005).seg(10 * MIN, 60)
    ev = run([on, off], fleet, g).of(Rule.ROUTE_DEVIATION)
    assert list(ev.vehicle) == [1]
    assert ev.aux[0] == 0 and ev.value[0] == pytest.approx(0.03 * KM_PER_DEG * math.cos(math.radians(30)), rel=0.05)


def test_overtime_parking_boundary():
    ok = Builder(at(9)).seg(10 * MIN, 60).seg(2 * H, 0).seg(10 * MIN, 60)
    bad = Builder(at(9)).seg(10 * MIN, 60).seg(2 * H + 10 * S, 0).seg(10 * MIN, 60)
    p = run([ok, bad]).of(Rule.OVERTIME_PARKING)
    assert list(p.vehicle) == [1]
    assert p.value[0] == pytest.approx(120 + 1 / 6)


def test_terminal_alarm_bits_rise_and_fall():
    b = Builder(at(9)).seg(MIN, 60).seg(MIN, 60, alarm=(1 << 1) | (1 << 20)).seg(MIN, 60, alarm=1 << 20)
    ev = run([b]).of(Rule.TERMINAL_ALARM)
    got = {int(a): (int(s), int(e), bool(o)) for a, s, e, o in zip(ev.aux, ev.start_ns, ev.end_ns, ev.open)}
    assert got[1] == (at(9, 1), at(9, 2), False)
    assert got[20] == (at(9, 1), at(9, 2, 50), True)  # answer-cleared bit still set at end of data
    assert jt808_bits.bit_of(20, 2019).clear is jt808_bits.Clear.ANSWER
    assert jt808_bits.bit_of(1, 2013).clear is jt808_bits.Clear.HOLD


def test_alarm_bits_read_with_each_rows_edition():
    """One batch, terminals of both editions: each row's bits are read with its own edition's table
    (2013: bit 31 非法开门, bits 15-17 reserved; 2019 the other way round), falling back to the
    vehicle's registered edition and then to the default (2019) for JSON telemetry."""
    word = (1 << 15) | (1 << 31)
    bs = [Builder(at(9)).seg(MIN, 60, alarm=word) for _ in range(4)]
    fleet = Fleet.uniform(4)
    fleet.edition[:] = [0, 2019, 2013, 0]
    tr = tracks_of(*bs, editions=[2013, 2019, 0, 0])
    ev = detect(tr, fleet).of(Rule.TERMINAL_ALARM)
    got = {int(v): (int(a), int(e)) for v, a, e in zip(ev.vehicle, ev.aux, ev.value)}
    assert got == {0: (31, 2013), 1: (15, 2019), 2: (31, 2013), 3: (15, 2019)}
    # A 2011 terminal (known from its registration) is read with the 2013 table.
    fleet.edition[:] = 2011
    ev = detect(tracks_of(*bs), fleet).of(Rule.TERMINAL_ALARM)
    assert set(ev.aux.tolist()) == {31} and set(ev.value.tolist()) == {2011.0}
    assert [r["alarm"] for r in ev.records()] == ["illegal_door_open"] * 4
    assert jt808_bits.names(1 | 1 << 2) == ["emergency", "fatigue_driving"]
    assert jt808_bits.names(word, 2013) == ["illegal_door_open"]
    with pytest.raises(ValueError, match="edition 2015"):
        detect(tracks_of(*bs, editions=[2015, 0, 0, 0]), fleet)


def test_clear_rules_follow_the_standard_tables():
    """JT/T 808-2013 Table 24 / 2019 Table 25, 处理说明: 收到应答后清零 for 0, 3 (2013), 20-22, 27, 28,
    31 (2013); every other defined bit is held while the condition lasts."""
    def answer(edition):
        return {b.bit for b in jt808_bits.ALARM_BITS
                if edition in b.editions and b.clear == jt808_bits.Clear.ANSWER}

    def defined(edition):
        return {b.bit for b in jt808_bits.ALARM_BITS if edition in b.editions}

    assert answer(2013) == {0, 3, 20, 21, 22, 27, 28, 31}
    assert answer(2019) == {0, 20, 21, 22, 27, 28}
    assert defined(2013) == set(range(32)) - {15, 16, 17}
    assert defined(2019) == set(range(31))
    assert all(b.clear in (jt808_bits.Clear.ANSWER, jt808_bits.Clear.HOLD) for b in jt808_bits.ALARM_BITS)
    # 2019 redefines bit 3 (危险预警 -> 危险驾驶行为报警) and with it the clear rule.
    assert (jt808_bits.bit_of(3, 2013).name_zh, jt808_bits.bit_of(3, 2019).clear) == ("危险预警",
                                                                                    jt808_bits.Clear.HOLD)


def test_rule_codes_match_kernel():
    assert [r.value for r in Rule] == list(range(1, 11))


def test_event_buffer_grows():
    b = Builder(at(9))
    for _ in range(30):
        b.seg(MIN, 60).seg(MIN, 60, alarm=2)
    ev = detect(tracks_of(b), Fleet.uniform(1), None, RuleParams(), capacity=4)
    assert len(ev.of(Rule.TERMINAL_ALARM)) == 30


# ---------------------------------------------------------------- KPIs

def _kpi_fleet() -> tuple[Tracks, Fleet]:
    # v0: 3 clean points 0.5 km apart, then a 3 km hole, then an invalid (0, 0) point.
    d = 0.5 / KM_PER_DEG
    v0 = Builder(at(9), step_s=60)
    for i in range(3):
        v0.rows.append((at(9, i), 30 + i * d, 120.0, 30.0, 0))
    v0.rows.append((at(9, 10), 30 + 2 * d + 3 / KM_PER_DEG, 120.0, 30.0, 0))
    v0.rows.append((at(9, 11), 0.0, 0.0, 30.0, 0))
    # v1: 2 points plus one drift spike (100 km in 10 s) in between.
    v1 = Builder(at(9))
    v1.rows += [(at(10), 30.0, 120.0, 50.0, 0), (at(10, 0, 10), 31.0, 120.0, 50.0, 0),
                (at(10, 0, 20), 30.001, 120.0, 50.0, 0)]
    v2 = Builder(at(9))  # networked but silent
    v3 = Builder(at(9))  # not networked
    tr = tracks_of(v0, v1, v2, v3)
    fleet = Fleet.uniform(4)
    fleet.networked[3] = False
    fleet.enterprise[:] = [0, 0, 0, 1]
    return tr, fleet


def test_kpi_formulas_hand_checked():
    tr, fleet = _kpi_fleet()
    day = china_day(at(0))
    st = day_stats(tr, day, 1)
    assert st.n_points[:, 0].tolist() == [5, 3, 0, 0]
    assert st.n_valid[:, 0].tolist() == [4, 3, 0, 0]
    assert st.n_drift[:, 0].tolist() == [0, 1, 0, 0]
    assert st.km_total[0, 0] == pytest.approx(4.0, rel=1e-3)
    assert st.km_complete[0, 0] == pytest.approx(1.0, rel=1e-3)
    kp = group_kpis(st, fleet, None)
    e0 = 0
    assert kp.registered[e0, 0] == 3 and kp.networked[e0, 0] == 3 and kp.online[e0, 0] == 2
    assert kp.network_rate[e0, 0] == 1.0
    assert kp.online_rate[e0, 0] == pytest.approx(2 / 3)
    assert kp.valid_rate[e0, 0] == pytest.approx(7 / 8)
    assert kp.drift_rate[e0, 0] == pytest.approx(1 / 2)
    assert kp.drift_point_rate[e0, 0] == pytest.approx(1 / 7)
    v1_km = k.haversine_km(30.0, 120.0, 30.001, 120.0)
    assert kp.track_completeness[e0, 0] == pytest.approx((1.0 + v1_km) / (4.0 + v1_km), rel=1e-3)
    # Enterprise 1: its only vehicle is not networked.
    assert kp.network_rate[1, 0] == 0.0 and math.isnan(kp.online_rate[1, 0])


def test_kpi_event_counts_and_fatigue_hours():
    fleet = Fleet.uniform(2, night_ban=True)
    fleet.enterprise[:] = [0, 1]
    a = Builder(at(8)).seg(5 * H, 110).seg(30 * MIN, 0)
    b = Builder(at(2, 30)).seg(10 * MIN, 60)
    tr = tracks_of(a, b)
    ev = detect(tr, fleet)
    day = china_day(at(0))
    kp = group_kpis(day_stats(tr, day, 1), fleet, ev)
    assert kp.overspeed_count[:, 0].tolist() == [1, 0]
    assert kp.night_violations[:, 0].tolist() == [0, 1]
    assert kp.fatigue_hours[0, 0] == pytest.approx(1.0, abs=0.01)


def test_day_stats_kernel_matches_numpy_on_clean_tracks():
    rng = np.random.default_rng(7)
    bs = []
    for v in range(20):
        b = Builder(at(0) + int(rng.integers(0, 3600)) * S)
        for _ in range(10):
            b.seg(int(rng.integers(1, 60)) * MIN, float(rng.choice([0, 30, 80])))
            if rng.random() < 0.2:
                b.jump(int(rng.integers(1, 30)) * MIN)
        if rng.random() < 0.3:
            b.point(300.0)  # invalid speed
        bs.append(b)
    tr = tracks_of(*bs)
    day = china_day(at(0))
    a = day_stats(tr, day, 2)
    b = day_stats_numpy(tr, day, 2)
    for f in ("n_points", "n_valid", "n_drift"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert np.allclose(a.km_total, b.km_total) and np.allclose(a.km_complete, b.km_complete)
    assert a.n_points.sum() == len(tr)


def test_event_records_name_rules_and_alarm_clear_rules():
    b = Builder(at(9)).seg(MIN, 60, alarm=1 << 28).seg(MIN, 60)
    rows = run([b]).records(vehicle_ids=["粤B12345"])
    assert rows == [{"vehicle": "粤B12345", "rule": "terminal_alarm", "start_ns": at(9), "end_ns": at(9, 1),
                     "value": 2019.0, "aux": 28, "open": False, "alarm": "illegal_displacement",
                     "clear": "cleared_after_answer"}]
    b = Builder(at(9)).seg(MIN, 60, alarm=1).seg(MIN, 60)
    (row,) = run([b]).records()
    assert (row["alarm"], row["clear"]) == ("emergency", "cleared_after_answer")  # 紧急报警: 收到应答后清零


# ---------------------------------------------------------------- kernel vs a plain-Python reading of the rules

def _reference(ts, speed, night_ban, limit_day, p: RuleParams):
    """Overspeed, 02:00-05:00 and overtime parking, written directly from the rule text (no gaps)."""
    out = []
    tod = [(t + p.utc_offset_ns) % (24 * H) for t in ts]
    is_night = [x >= 22 * H or x < 6 * H for x in tod]
    over = [s > limit_day * (p.night_factor if n else 1.0) for s, n in zip(speed, is_night)]
    i = 0
    while i < len(ts):
        if over[i]:
            j = i
            mx = speed[i]
            while j + 1 < len(ts) and over[j + 1]:
                j += 1
                mx = max(mx, speed[j])
            if ts[j] - ts[i] >= p.overspeed_min_ns:
                out.append((Rule.OVERSPEED, ts[i], ts[j]))
            i = j + 1
        else:
            i += 1
    if night_ban:
        win = [p.night_ban_from_ns <= x < p.night_ban_to_ns for x in tod]
        i = 0
        while i < len(ts):
            if win[i] and speed[i] > p.moving_kmh:
                j, last = i, i
                while j + 1 < len(ts) and win[j + 1]:
                    j += 1
                    if speed[j] > p.moving_kmh:
                        last = j
                out.append((Rule.NIGHT_COACH, ts[i], ts[last]))
                i = j + 1
            else:
                i += 1
    i = 0  # parking: maximal runs of stopped intervals (an interval takes its start point's state)
    while i < len(ts) - 1:
        if speed[i] <= p.moving_kmh:
            j = i
            while j + 1 < len(ts) - 1 and speed[j + 1] <= p.moving_kmh:
                j += 1
            if ts[j + 1] - ts[i] > p.parking_max_ns:
                out.append((Rule.OVERTIME_PARKING, ts[i], ts[j + 1]))
            i = j + 1
        else:
            i += 1
    return sorted(out)


def test_kernel_matches_plain_python_reference_on_random_days():
    rng = np.random.default_rng(11)
    p = RuleParams(parking_max_ns=40 * MIN)
    bs, bans = [], []
    for _ in range(12):
        b = Builder(at(0) + int(rng.integers(0, 600)) * S, step_s=30)
        while b.t < at(0, day=1):
            b.seg(int(rng.integers(1, 90)) * MIN, float(rng.choice([0.0, 3.0, 60.0, 79.0, 85.0, 101.0])))
        bs.append(b)
        bans.append(bool(rng.random() < 0.5))
    fleet = Fleet.uniform(len(bs))
    fleet.night_ban[:] = bans
    ev = detect(tracks_of(*bs), fleet, None, p)
    checked = 0
    for v, b in enumerate(bs):
        ts = [r[0] for r in b.rows]
        sp = [r[3] for r in b.rows]
        want = _reference(ts, sp, bans[v], 100.0, p)
        mine = ev.vehicle == v
        got = sorted((Rule(int(r)), int(s), int(e)) for r, s, e in
                     zip(ev.rule[mine], ev.start_ns[mine], ev.end_ns[mine])
                     if r in (Rule.OVERSPEED, Rule.NIGHT_COACH, Rule.OVERTIME_PARKING))
        assert got == want, v
        checked += len(want)
    assert checked > 20  # the random days do exercise the rules


def test_kpi_records_rows():
    from wulian.core.vehicles.kpi import kpi_records
    tr, fleet = _kpi_fleet()
    day = china_day(at(0))
    rows = kpi_records(group_kpis(day_stats(tr, day, 1), fleet, None), ["E0", "E1"])
    assert [r["group"] for r in rows] == ["E0", "E1"]
    assert rows[0]["online"] == 2 and rows[0]["online_rate"] == pytest.approx(2 / 3)
    assert rows[1]["online_rate"] is None and rows[1]["network_rate"] == 0.0
