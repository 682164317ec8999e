"""Every built-in rule of every domain, by id and by name (ValueError at import if two collide)."""
from __future__ import annotations

from wulian.core.alarms.system_rules import SystemRule
from wulian.core.environment import system_rules as environment
from wulian.core.grid import system_rules as grid
from wulian.core.meters import system_rules as meters
from wulian.core.profiles import system_rules as profiles
from wulian.core.traffic import system_rules as traffic
from wulian.core.vehicles import system_rules as vehicles

DOMAINS: dict[str, tuple[SystemRule, ...]] = {
    "traffic": traffic.SYSTEM_RULES, "vehicles": vehicles.SYSTEM_RULES, "grid": grid.SYSTEM_RULES,
    "meters": meters.SYSTEM_RULES, "environment": environment.SYSTEM_RULES, "profiles": profiles.SYSTEM_RULES,
}
ALL: tuple[SystemRule, ...] = tuple(r for rules in DOMAINS.values() for r in rules)
BY_ID: dict[int, SystemRule] = {r.rule_id: r for r in ALL}
BY_NAME: dict[str, SystemRule] = {r.name: r for r in ALL}
if len(BY_ID) != len(ALL) or len(BY_NAME) != len(ALL):
    raise ValueError("two built-in rules share an id or a name")
