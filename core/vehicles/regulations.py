"""Which vehicle rule applies to which vehicle class, and the clause it comes from.

National rules set the scope; a deployment may add classes to a scope where a local rule is stricter
(``RuleParams.with_local``, settings ``WULIAN_ENERGY__VEHICLE_RULE_CLASSES`` and
``WULIAN_ENERGY__NIGHT_BANS``), never remove them. The coach rules of 《道路旅客运输企业安全管理规范》
(交运发〔2018〕55号) and the 80 % night speed of 《道路运输车辆动态监督管理办法》 are written for passenger
transport only: a hazardous-goods truck is held to the general 4 h / 20 min rule of the road traffic
safety regulations and to its own speed limits. The clause texts were read in reprints, not the gazette.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class VehicleClass(IntEnum):
    """Regulated classes (registry attr ``vehicle_class``); the overspeed limit is looked up by class."""

    COACH_LINE = 0  # 班线客车
    COACH_CHARTER = 1  # 旅游包车
    HAZMAT = 2  # 危险货物运输车


CLASS_NAMES: dict[str, VehicleClass] = {
    "coach_line": VehicleClass.COACH_LINE, "coach_charter": VehicleClass.COACH_CHARTER,
    "hazmat": VehicleClass.HAZMAT}
COACHES = frozenset({VehicleClass.COACH_LINE, VehicleClass.COACH_CHARTER})
ALL = frozenset(VehicleClass)


@dataclass(frozen=True, slots=True)
class Regulation:
    key: str
    classes: frozenset[VehicleClass]  # national scope
    source: str  # where it is written ("" for platform rules that no clause fixes)
    says: str
    local: bool = False  # a deployment may add classes (a stricter local rule)


REGULATIONS: tuple[Regulation, ...] = (
    Regulation("overspeed", ALL,
               "《道路交通安全法实施条例》第七十八条 (客车 100 km/h on expressways); "
               "《危险货物道路运输安全管理办法》第四十六条 (危险货物运输车辆 80 km/h on expressways, 60 elsewhere)",
               "sustained speed over the class's limit (RuleParams.class_limit_kmh)"),
    Regulation("fatigue", ALL, "《道路交通安全法实施条例》第六十二条第七项",
               "more than 4 h of continuous driving without a stop of at least 20 min"),
    Regulation("night_fatigue", COACHES, "《道路旅客运输企业安全管理规范》第三十八条第(一)项",
               "at night (22:00-06:00) continuous driving limited to 2 h", local=True),
    Regulation("fatigue_24h", COACHES, "《道路旅客运输企业安全管理规范》第三十八条第(二)项",
               "at most 8 h of driving in any 24 h", local=True),
    Regulation("night_speed", COACHES, "《道路运输车辆动态监督管理办法》第二十四条",
               "at night (22:00-06:00) at most 80 % of the day speed limit", local=True),
    Regulation("night_coach", COACHES, "《道路旅客运输企业安全管理规范》第三十八条第(五)项",
               "long-distance coaches (registry attr night_ban) stop 02:00-05:00 or relay (接驳运输); "
               "fixed airport/rail lines and routes within 100 km are exempt"),
    Regulation("night_ban", frozenset(), "",
               "a city's own night ban by class (settings night_bans, e.g. hazardous goods 22:00-06:00)"),
    Regulation("geofence", frozenset({VehicleClass.HAZMAT}), "《危险货物道路运输安全管理办法》第四十九条",
               "areas where the police restrict hazardous goods (geofences of kind 'restricted')"),
    Regulation("route_deviation", ALL, "", "a vehicle with a fixed route (registry attr route) off it"),
    Regulation("offline_jump", ALL, "", "reappearing far from where the terminal went silent"),
    Regulation("overtime_parking", ALL, "", "stopped longer than the platform's limit"),
    Regulation("terminal_alarm", ALL, "JT/T 808-2013 表24 / JT/T 808-2019 表25",
               "the terminal's alarm bits, read with its edition's table (core.vehicles.jt808_bits)"),
)
BY_KEY: dict[str, Regulation] = {r.key: r for r in REGULATIONS}


def class_of(name: str) -> VehicleClass:
    try:
        return CLASS_NAMES[name]
    except KeyError:
        raise ValueError(f"vehicle class {name!r}: expected one of {sorted(CLASS_NAMES)}") from None


def scope(key: str, extra: dict[str, frozenset[int]] | None = None) -> frozenset[int]:
    """The classes rule ``key`` applies to: its national scope plus what ``extra`` adds."""
    return BY_KEY[key].classes | (extra or {}).get(key, frozenset())


def local_scope(extra: dict[str, list[str]]) -> dict[str, frozenset[int]]:
    """Parse a setting of classes added to rule scopes ({"night_fatigue": ["hazmat"]}); ValueError
    naming the bad key or class, so a typo is not a rule silently left out."""
    out = {}
    for key, names in extra.items():
        reg = BY_KEY.get(key)
        if reg is None or not reg.local:
            allowed = sorted(r.key for r in REGULATIONS if r.local)
            raise ValueError(f"vehicle rule {key!r} cannot be extended locally: expected one of {allowed}")
        out[key] = frozenset(class_of(n) for n in names)
    return out
