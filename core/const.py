"""Names shared by every package: streams, topic kinds, data flags, defaults."""
from __future__ import annotations

from enum import StrEnum


class Stream(StrEnum):
    """The monitored streams; the third segment of an MQTT topic ``wl/{region}/{stream}/{device}/{kind}``."""

    POLLUTION = "pollution"  # 重点污染源: stack gas and wastewater outlets, petrochemical boundary monitors
    AIR = "air"  # ambient air-quality stations
    WATER = "water"  # Lianjiang water-quality stations
    GRID = "grid"  # smart-grid meters and feeders
    METER = "meter"  # 四表合一 collectors (electricity, water, gas, heat)
    VEHICLE = "vehicle"  # 两客一危 GPS terminals
    TRAFFIC = "traffic"  # road-segment detectors


class Kind(StrEnum):
    """Payload kinds; the last topic segment."""

    TELEMETRY = "telemetry"  # Wulian JSON (README: payload specification)
    HJ212 = "hj212"  # raw HJ 212 packet
    JT808 = "jt808"  # raw JT/T 808 frame (escaped, with 0x7e delimiters)
    DLT645 = "dlt645"  # raw DL/T 645-2007 frame
    CJT188 = "cjt188"  # raw CJ/T 188 frame


# Streams whose JSON payloads are scalar metric sets stored in ``readings``.
SCALAR_STREAMS = frozenset({Stream.POLLUTION, Stream.AIR, Stream.WATER, Stream.GRID, Stream.METER})

# Data flags. HJ 212-2017 §6.6 (数据标记): N normal, F stopped, M maintenance, S manual input,
# D fault, C calibration, T over the instrument range, B communication abnormal.
FLAG_NORMAL = "N"
DATA_FLAGS = frozenset("NFMSDCTBHPV")  # N..B per HJ 212; H/P/V kept for device-specific extensions
# Flags whose data is excluded from exceedance rules and validity counts (HJ 75/76 practice).
INVALID_FLAGS = frozenset("FMSDCTB")

CHINA_TZ = "Asia/Shanghai"  # day buckets and DataTime are China time; storage is UTC

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
METRIC_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"
REGION_PATTERN = r"^[a-z][a-z0-9_\-]{0,31}$"

ALERT_CHANNEL = "wulian_alerts"  # PostgreSQL NOTIFY channel announcing every committed alert change

# Rule ids of built-in domain rules that derived-data jobs raise alerts for (user rules come from the
# ``rules`` table's identity, far below this range).
SYSTEM_RULE_BASE = 1_000_000_000

# ``device_events.kind``: what codecs put in an event's "kind" (hj212_equipment_state, jt808_register, ...).
EVENT_KIND_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
