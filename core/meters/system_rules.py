"""The built-in meter rules (``SYSTEM_RULE_BASE + 3xx``). Register events are instants: a tamper or jump
alert stays open for a person to close; a reset is raised and cleared at once (history only). Each
register event code maps to its ``meter_anomalies.kind`` and its rule (None: recorded, no alert)."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule
from wulian.core.meters.consumption import Code

EVENT_RULES: dict[Code, tuple[str, SystemRule | None]] = {
    Code.BACKWARDS: ("backwards", SystemRule(301, "register_backwards", "major",
                                              "表码倒走 register went backwards (tamper or fault)", auto_clear=False)),
    Code.RESET: ("reset", SystemRule(302, "meter_reset", "warning", "表码归零 register reset: meter replaced?")),
    Code.JUMP: ("jump", SystemRule(303, "register_jump", "minor", "表码跳变 implausible register jump",
                                   auto_clear=False)),
    Code.REPLACED: ("replaced", None),
    Code.ROLLOVER: ("rollover", None),
}
RUN_RULES: dict[str, SystemRule] = {
    "zero_consumption": SystemRule(304, "zero_consumption", "warning", "连续零用量 zero consumption for days"),
    "night_leak": SystemRule(305, "night_leak", "major", "夜间最小流量超限 water leak (minimum night flow)"),
    "gas_never_stops": SystemRule(306, "gas_never_stops", "critical", "燃气长流 gas flow that never stops"),
}

SYSTEM_RULES: tuple[SystemRule, ...] = (*(r for _, r in EVENT_RULES.values() if r is not None), *RUN_RULES.values())
