"""The built-in environment rules that derived-data jobs raise alerts for: ids, names, severities.

Ids sit in the system range (``core.const.SYSTEM_RULE_BASE + n``), far above user rules from the
``rules`` table, so an alert's ``rule_id`` says which built-in rule raised it. Defined once here; the
jobs, the API and the tests import them.
"""
from __future__ import annotations

from dataclasses import dataclass

from wulian.core.const import SYSTEM_RULE_BASE


@dataclass(frozen=True, slots=True)
class SystemRule:
    rule_id: int
    name: str  # the Episode.rule name of core.environment
    title: str  # alert title prefix
    severity: str  # one of the alerts table's severities


SOURCE_EXCEEDANCE = SystemRule(SYSTEM_RULE_BASE + 701, "source_exceedance", "排放超标 emission over permit", "major")
LOW_VALID_RATE = SystemRule(SYSTEM_RULE_BASE + 702, "low_valid_rate", "有效数据率不足 valid-data rate low", "minor")
HEAVY_POLLUTION = SystemRule(SYSTEM_RULE_BASE + 703, "heavy_pollution", "重污染预警 heavy pollution", "critical")
BOUNDARY_EXCEEDANCE = SystemRule(SYSTEM_RULE_BASE + 704, "boundary_exceedance", "厂界超标 boundary over limit",
                                 "major")
WATER_BELOW_TARGET = SystemRule(SYSTEM_RULE_BASE + 705, "water_below_target", "水质劣于目标 water worse than target",
                                "major")
POLLUTION_PULSE = SystemRule(SYSTEM_RULE_BASE + 706, "pollution_pulse", "污染团 pollution pulse", "critical")

SYSTEM_RULES: tuple[SystemRule, ...] = (
    SOURCE_EXCEEDANCE, LOW_VALID_RATE, HEAVY_POLLUTION, BOUNDARY_EXCEEDANCE, WATER_BELOW_TARGET, POLLUTION_PULSE,
)
BY_ID = {r.rule_id: r for r in SYSTEM_RULES}
BY_NAME = {r.name: r for r in SYSTEM_RULES}
