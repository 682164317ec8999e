"""JT/T 808 alarm-flag bits (0x0200 DWORD 0) with names and clear rules, shared by codec and rules.

The clear rules follow the 2013 enum comments as collected in reference/protocols.md §2.4 (they come
from library comments, not the standard's text):

* ``HOLD``   - the terminal keeps the bit set while the condition holds and clears it itself;
* ``ANSWER`` - the bit stays set until the platform answers (0x8203 manual confirmation, or result 4
  in 0x8001), so an open alert needs an operator action;
* ``TERMINAL`` - no rule is stated: the bit is mirrored as the terminal reports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Clear(StrEnum):
    HOLD = "while_condition_holds"
    ANSWER = "cleared_after_answer"
    TERMINAL = "terminal_reported"


@dataclass(frozen=True, slots=True)
class AlarmBit:
    bit: int
    name: str
    name_zh: str
    clear: Clear
    editions: frozenset[int] = frozenset({2013, 2019})


def _b(bit: int, name: str, zh: str, clear: Clear = Clear.TERMINAL, editions=(2013, 2019)) -> AlarmBit:
    return AlarmBit(bit, name, zh, clear, frozenset(editions))


ALARM_BITS: tuple[AlarmBit, ...] = (
    _b(0, "emergency", "紧急报警"),
    _b(1, "overspeed", "超速报警", Clear.HOLD),
    _b(2, "fatigue_driving", "疲劳驾驶", Clear.HOLD),
    _b(3, "danger_warning", "危险预警", Clear.HOLD),
    _b(4, "gnss_module_fault", "GNSS模块发生故障"),
    _b(5, "gnss_antenna_disconnected", "GNSS天线未接或被剪断"),
    _b(6, "gnss_antenna_short", "GNSS天线短路"),
    _b(7, "main_power_undervoltage", "终端主电源欠压"),
    _b(8, "main_power_lost", "终端主电源掉电"),
    _b(9, "display_fault", "终端LCD或显示器故障"),
    _b(10, "tts_fault", "TTS模块故障"),
    _b(11, "camera_fault", "摄像头故障"),
    _b(12, "ic_card_module_fault", "道路运输证IC卡模块故障"),
    _b(13, "overspeed_warning", "超速预警"),
    _b(14, "fatigue_warning", "疲劳驾驶预警"),
    _b(15, "violation_driving", "违规行驶报警", editions=(2019,)),
    _b(16, "tyre_pressure_warning", "胎压预警", editions=(2019,)),
    _b(17, "right_turn_blind_zone", "右转盲区异常报警", editions=(2019,)),
    _b(18, "driving_time_today_exceeded", "当天累计驾驶超时"),
    _b(19, "overtime_parking", "超时停车"),
    _b(20, "area_in_out", "进出区域", Clear.ANSWER),
    _b(21, "route_in_out", "进出路线", Clear.ANSWER),
    _b(22, "route_segment_time", "路段行驶时间不足/过长", Clear.ANSWER),
    _b(23, "route_deviation", "路线偏离报警"),
    _b(24, "vss_fault", "车辆VSS故障"),
    _b(25, "fuel_abnormal", "车辆油量异常"),
    _b(26, "stolen", "车辆被盗"),
    _b(27, "illegal_ignition", "车辆非法点火"),
    _b(28, "illegal_displacement", "车辆非法位移", Clear.ANSWER),
    _b(29, "collision_warning", "碰撞预警"),
    _b(30, "rollover_warning", "侧翻预警"),
    _b(31, "illegal_door_open", "非法开门报警", Clear.ANSWER, editions=(2013,)),
)

BY_BIT: dict[int, AlarmBit] = {b.bit: b for b in ALARM_BITS}


def mask_for(edition: int = 2019) -> int:
    """Bits defined in ``edition`` (2013 or 2019); reserved bits are left out of alert generation."""
    m = 0
    for b in ALARM_BITS:
        if edition in b.editions:
            m |= 1 << b.bit
    return m


def names(word: int, edition: int = 2019) -> list[str]:
    """Names of the alarm bits set in ``word`` that the edition defines."""
    return [b.name for b in ALARM_BITS if (word >> b.bit) & 1 and edition in b.editions]
