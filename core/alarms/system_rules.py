"""Built-in rules: the type. Each domain lists its own in ``core/<domain>/system_rules.py``.

A built-in rule is raised by a derived-data job (not compiled from the ``rules`` table); its alert
``rule_id`` is ``core.const.SYSTEM_RULE_BASE + n``, far above the user rules' identity range, so an
alert's ``rule_id`` says which built-in rule raised it. Ranges of ``n``: traffic 1..99, vehicles
100..199, grid 200..299, meters 300..399, environment 700..799, profiles 800..899 (``core.alarms.builtin`` checks that
no two rules share an id).
"""
from __future__ import annotations

from dataclasses import dataclass

from wulian.core.const import SYSTEM_RULE_BASE


@dataclass(frozen=True, slots=True)
class SystemRule:
    n: int  # rule_id = SYSTEM_RULE_BASE + n
    name: str  # stable name (the environment's Episode.rule, a vehicle violation's rule, ...)
    severity: str  # one of the alerts table's severities
    title: str  # alert title (prefix)
    auto_clear: bool = True  # False: the alert stays open until a person closes it

    @property
    def rule_id(self) -> int:
        return SYSTEM_RULE_BASE + self.n
