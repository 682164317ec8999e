"""The built-in traffic rule (``SYSTEM_RULE_BASE + 1``): an incident the online detector raised."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule

TRAFFIC_INCIDENT = SystemRule(1, "traffic_incident", "major", "traffic incident")
SYSTEM_RULES: tuple[SystemRule, ...] = (TRAFFIC_INCIDENT,)
