"""The built-in environment rules that derived-data jobs raise alerts for (``SYSTEM_RULE_BASE + 7xx``)."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule

SOURCE_EXCEEDANCE = SystemRule(701, "source_exceedance", "major", "排放超标 emission over permit")
LOW_VALID_RATE = SystemRule(702, "low_valid_rate", "minor", "有效数据率不足 valid-data rate low")
HEAVY_POLLUTION = SystemRule(703, "heavy_pollution", "critical", "重污染预警 heavy pollution")
BOUNDARY_EXCEEDANCE = SystemRule(704, "boundary_exceedance", "major", "厂界超标 boundary over limit")
WATER_BELOW_TARGET = SystemRule(705, "water_below_target", "major", "水质劣于目标 water worse than target")
POLLUTION_PULSE = SystemRule(706, "pollution_pulse", "critical", "污染团 pollution pulse")

SYSTEM_RULES: tuple[SystemRule, ...] = (
    SOURCE_EXCEEDANCE, LOW_VALID_RATE, HEAVY_POLLUTION, BOUNDARY_EXCEEDANCE, WATER_BELOW_TARGET, POLLUTION_PULSE,
)
