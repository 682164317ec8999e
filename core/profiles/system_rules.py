"""Built-in rules of the shipped profiles' derive jobs (``SYSTEM_RULE_BASE + 8xx``)."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule

ENERGY_ANOMALY = SystemRule(801, "energy_above_own_profile", "warning",
                            "用能异常 electricity above the enterprise's own hour-of-week profile")

SYSTEM_RULES: tuple[SystemRule, ...] = (ENERGY_ANOMALY,)
