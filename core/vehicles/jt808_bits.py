"""JT/T 808 alarm-flag bits (0x0200 DWORD 0) per edition, with names and clear rules; shared by codec,
rules and the vehicle job.

Each edition has its own table: JT/T 808-2013 Table 24 (2011 terminals use the same header and are read
with it) and JT/T 808-2019 Table 25. Their differences: 2019 defines bits 15-17 (reserved in 2013),
reserves bit 31 (非法开门 in 2013), turns bit 3 from 危险预警 (cleared after the answer) into 危险驾驶行为
报警 (held while the condition lasts) and bit 29 from 碰撞预警 into 碰撞侧翻报警.

The 处理说明 column gives each bit one of two clear rules:

* ``HOLD``   - 标志维持至报警条件解除: the terminal keeps the bit set while the condition holds;
* ``ANSWER`` - 收到应答后清零: the bit stays set until the platform answers (0x8203 人工确认报警, whose
  body lists exactly these bits, or result 4 in 0x8001), so the alarm needs an operator's confirmation.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Clear(StrEnum):
    HOLD = "while_condition_holds"
    ANSWER = "cleared_after_answer"


EDITIONS = (2011, 2013, 2019)  # editions a terminal may speak (devices / vehicle_positions.protocol_edition)
TABLE_EDITIONS = (2013, 2019)  # editions with an alarm-bit table here
# JSON telemetry says nothing about its edition: its ``alarm`` word is read with the current edition's
# table. A registry row's protocol_edition (devices) overrides this for a vehicle.
DEFAULT_EDITION = 2019


def table_edition(edition: int) -> int:
    """The alarm table that reads ``edition``'s words: 2011 and 2013 share the 2013 table (the 2013
    edition revised 2011 with the same header; a 2011 terminal never sets the bits 2013 added)."""
    if edition not in EDITIONS:
        raise ValueError(f"JT/T 808 edition {edition!r}: expected one of {EDITIONS}")
    return 2019 if edition == 2019 else 2013


@dataclass(frozen=True, slots=True)
class AlarmBit:
    bit: int
    name: str
    name_zh: str
    clear: Clear
    editions: frozenset[int]  # table editions defining the bit with this meaning


_H, _A = Clear.HOLD, Clear.ANSWER
_BOTH = (2013, 2019)


def _b(bit: int, name: str, zh: str, clear: Clear, editions=_BOTH) -> AlarmBit:
    return AlarmBit(bit, name, zh, clear, frozenset(editions))


ALARM_BITS: tuple[AlarmBit, ...] = (
    _b(0, "emergency", "紧急报警", _A),
    _b(1, "overspeed", "超速报警", _H),
    _b(2, "fatigue_driving", "疲劳驾驶", _H),
    _b(3, "danger_warning", "危险预警", _A, (2013,)),
    _b(3, "dangerous_driving", "危险驾驶行为报警", _H, (2019,)),
    _b(4, "gnss_module_fault", "GNSS模块发生故障", _H),
    _b(5, "gnss_antenna_disconnected", "GNSS天线未接或被剪断", _H),
    _b(6, "gnss_antenna_short", "GNSS天线短路", _H),
    _b(7, "main_power_undervoltage", "终端主电源欠压", _H),
    _b(8, "main_power_lost", "终端主电源掉电", _H),
    _b(9, "display_fault", "终端LCD或显示器故障", _H),
    _b(10, "tts_fault", "TTS模块故障", _H),
    _b(11, "camera_fault", "摄像头故障", _H),
    _b(12, "ic_card_module_fault", "道路运输证IC卡模块故障", _H),
    _b(13, "overspeed_warning", "超速预警", _H),
    _b(14, "fatigue_warning", "疲劳驾驶预警", _H),
    _b(15, "violation_driving", "违规行驶报警", _H, (2019,)),
    _b(16, "tyre_pressure_warning", "胎压预警", _H, (2019,)),
    _b(17, "right_turn_blind_zone", "右转盲区异常报警", _H, (2019,)),
    _b(18, "driving_time_today_exceeded", "当天累计驾驶超时", _H),
    _b(19, "overtime_parking", "超时停车", _H),
    _b(20, "area_in_out", "进出区域", _A),
    _b(21, "route_in_out", "进出路线", _A),
    _b(22, "route_segment_time", "路段行驶时间不足/过长", _A),
    _b(23, "route_deviation", "路线偏离报警", _H),
    _b(24, "vss_fault", "车辆VSS故障", _H),
    _b(25, "fuel_abnormal", "车辆油量异常", _H),
    _b(26, "stolen", "车辆被盗", _H),
    _b(27, "illegal_ignition", "车辆非法点火", _A),
    _b(28, "illegal_displacement", "车辆非法位移", _A),
    _b(29, "collision_warning", "碰撞预警", _H, (2013,)),
    _b(29, "collision_rollover", "碰撞侧翻报警", _H, (2019,)),
    _b(30, "rollover_warning", "侧翻预警", _H),
    _b(31, "illegal_door_open", "非法开门报警", _A, (2013,)),
)

# table edition -> bit -> definition (reserved bits are absent)
TABLES: dict[int, dict[int, AlarmBit]] = {
    e: {b.bit: b for b in ALARM_BITS if e in b.editions} for e in TABLE_EDITIONS}


def bit_of(bit: int, edition: int = DEFAULT_EDITION) -> AlarmBit | None:
    """The definition of ``bit`` in ``edition``'s table, None where the edition reserves it."""
    return TABLES[table_edition(edition)].get(bit)


def mask_for(edition: int = DEFAULT_EDITION) -> int:
    """Bits defined in ``edition``; reserved bits are left out of alert generation."""
    m = 0
    for bit in TABLES[table_edition(edition)]:
        m |= 1 << bit
    return m


def names(word: int, edition: int = DEFAULT_EDITION) -> list[str]:
    """Names of the alarm bits set in ``word`` that the edition defines."""
    table = TABLES[table_edition(edition)]
    return [table[b].name for b in sorted(table) if (word >> b) & 1]
