"""The built-in grid rules (``SYSTEM_RULE_BASE + 2xx``): power-quality episodes by kind with the
``Bit`` flags they follow and the shortest duration worth an episode, feeder outages, transformer trends."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule
from wulian.core.grid.quality import Bit
from wulian.core.timebase import NS_PER_HOUR as _HOUR
from wulian.core.timebase import NS_PER_MIN as _MIN

EPISODES: dict[str, tuple[SystemRule, int, int]] = {
    "voltage": (SystemRule(201, "voltage_deviation", "major", "供电电压偏差超限 supply voltage deviation (GB/T 12325)"),
                Bit.V_HIGH | Bit.V_LOW, 15 * _MIN),
    "frequency": (SystemRule(202, "frequency_deviation", "major", "频率偏差超限 frequency deviation (GB/T 15945)"),
                  Bit.FREQ, 5 * _MIN),
    "unbalance": (SystemRule(203, "voltage_unbalance", "minor", "三相电压不平衡超限 voltage unbalance (GB/T 15543)"),
                  Bit.UNBALANCE, 15 * _MIN),
    "overload": (SystemRule(204, "overload", "major", "过载 current above rating"), Bit.OVERLOAD, 15 * _MIN),
    "low_pf": (SystemRule(205, "low_power_factor", "warning", "功率因数偏低 low power factor"), Bit.LOW_PF, _HOUR),
    "collapse": (SystemRule(206, "interruption", "major", "失压 voltage collapse at the meter"), Bit.COLLAPSE, 0),
}
OUTAGE = SystemRule(210, "feeder_outage", "critical", "线路停电 feeder outage (all meters silent or collapsed)")
TRANSFORMER = {
    "oil_temp": SystemRule(211, "transformer_temperature", "major",
                           "变压器油温趋近限值 top-oil temperature trending to its limit"),
    "load_pct": SystemRule(212, "transformer_load", "major", "变压器负载趋近额定 transformer load trending to its rating"),
}
SYSTEM_RULES: tuple[SystemRule, ...] = (*(rule for rule, _, _ in EPISODES.values()), OUTAGE, *TRANSFORMER.values())
