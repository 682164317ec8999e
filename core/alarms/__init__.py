"""The alarm core: rules as data, compiled against a series catalogue, evaluated by numba kernels.

Pure: no I/O, no clock. The lifecycle (alert rows, acknowledgements), persistence and the API live outside
``core`` and consume ``Transitions``.
"""
from wulian.core.alarms.compiler import SeriesCatalogue, SeriesKey
from wulian.core.alarms.engine import AlarmEngine, Transitions, flag_codes, warmup
from wulian.core.alarms.rules import Rule, RuleError, RuleKind, Severity, TransitionKind, flag_code

__all__ = [
    "AlarmEngine",
    "Rule",
    "RuleError",
    "RuleKind",
    "SeriesCatalogue",
    "SeriesKey",
    "Severity",
    "TransitionKind",
    "Transitions",
    "flag_code",
    "flag_codes",
    "warmup",
]
