"""The built-in vehicle rules (``SYSTEM_RULE_BASE + 1xx``), one per kernel rule; JT/T 808 terminal alarm
bits that make a terminal alarm critical."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule
from wulian.core.vehicles.rules import Rule

RULES: dict[Rule, SystemRule] = {
    Rule.OVERSPEED: SystemRule(101, "overspeed", "major", "超速 overspeed (sustained over the class limit)"),
    Rule.FATIGUE: SystemRule(102, "fatigue_driving", "major",
                             "疲劳驾驶 continuous driving over 4 h (coaches at night: 2 h) without a 20 min rest"),
    Rule.FATIGUE_24H: SystemRule(103, "driving_24h", "major", "累计驾驶超时 more than 8 h of driving in 24 h"),
    Rule.NIGHT_COACH: SystemRule(104, "night_coach", "major", "客车凌晨2-5时运行 coach running 02:00-05:00"),
    Rule.OFFLINE_JUMP: SystemRule(105, "offline_displacement", "minor",
                                  "离线位移 reappeared far from where it went silent"),
    Rule.GEOFENCE: SystemRule(106, "geofence_breach", "critical", "危货车辆进入禁行区 hazardous goods in a restricted area"),
    Rule.ROUTE_DEVIATION: SystemRule(107, "route_deviation", "minor", "路线偏离 fixed-route coach off its route"),
    Rule.OVERTIME_PARKING: SystemRule(108, "overtime_parking", "warning", "超时停车 overtime parking"),
    Rule.TERMINAL_ALARM: SystemRule(109, "terminal_alarm", "major", "终端报警 JT/T 808 terminal alarm"),
    Rule.NIGHT_BAN: SystemRule(110, "night_ban", "major", "夜间禁行 moving in a local night ban of its class"),
}
CRITICAL_BITS = {"emergency", "rollover_warning", "collision_warning", "collision_rollover", "stolen"}
SYSTEM_RULES: tuple[SystemRule, ...] = tuple(RULES.values())
