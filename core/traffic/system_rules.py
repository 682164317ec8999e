"""The built-in traffic rules: an incident the online detector raised (``SYSTEM_RULE_BASE + 1``), and a
detector fault (zeros, impossible speeds, flatline, erratic jumps; ``+ 2``), which is never an incident."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule

TRAFFIC_INCIDENT = SystemRule(1, "traffic_incident", "major", "traffic incident")
TRAFFIC_DETECTOR_FAULT = SystemRule(2, "traffic_detector_fault", "minor", "traffic detector fault")
SYSTEM_RULES: tuple[SystemRule, ...] = (TRAFFIC_INCIDENT, TRAFFIC_DETECTOR_FAULT)
