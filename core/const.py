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

# HJ 212 data flags (``xxxxxx-Flag``), one table per edition.
# HJ 212-2017 Table 8 (§6.6 数据标记): N normal, F instrument stopped, M maintenance, S manually entered
# set value, D instrument fault, C calibrating, T above the measuring upper limit, B instrument-logger
# communication abnormal.
HJ212_2017_FLAGS = frozenset("NFMSDCTB")
# HJ/T 212-2005 p.10 (pollution sources): P power fault (电源故障), F source stopped, C calibration,
# M maintenance, T above the upper limit, D fault, S set value, N normal. It has no B.
HJ212_2005_FLAGS = frozenset("NFMSDCTP")
# HJ/T 212-2005 air stations send digits: 0 calibration data, 1 meteorological parameter, 2 abnormal,
# 3 normal. 2017 defines no digits. Stored as the letter of the same meaning.
HJ212_2005_AIR_FLAGS = {"0": "C", "1": "N", "2": "D", "3": "N"}
FLAG_NORMAL = "N"
# What a reading may be stored with: the letters of either edition (a 2005 P or a 2017 B keeps its
# meaning whichever edition a device claims). Nothing else: a flag no edition defines (H, V, Z...) is
# unknown, stored by the HJ 212 codec as UNKNOWN_FLAG and refused in JSON payloads.
DATA_FLAGS = HJ212_2017_FLAGS | HJ212_2005_FLAGS
UNKNOWN_FLAG = "D"  # an unknown flag says nothing about the instrument being normal: never valid
# Valid data (exceedance rules, hourly validity, valid-data rates): in both editions only N marks an
# instrument working normally; every other flag, P included, marks data that does not count.
VALID_FLAGS = frozenset({FLAG_NORMAL})
INVALID_FLAGS = DATA_FLAGS - VALID_FLAGS

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
METRIC_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"
REGION_PATTERN = r"^[a-z][a-z0-9_\-]{0,31}$"
STREAM_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"  # a registry stream's name (core.streams), a topic segment
# the stream segment of the alert events we publish ({prefix}/{region}/alerts/{stream}/{device_id}): no
# stream may take it, and cluster routers (one wildcard subscription) drop these topics
ALERTS_SEGMENT = "alerts"

ALERT_CHANNEL = "wulian_alerts"  # PostgreSQL NOTIFY channel announcing every committed alert change
# NOTIFY channel (payload: a device id) on which a change to a device's credentials or its removal is
# announced by triggers (core/sql/0102_device_secrets.sql); gateways drop the device from their caches.
DEVICE_CREDENTIALS_CHANNEL = "wulian_device_credentials"

# Rule ids of built-in domain rules that derived-data jobs raise alerts for (user rules come from the
# ``rules`` table's identity, far below this range).
SYSTEM_RULE_BASE = 1_000_000_000

# ``device_events.kind``: what codecs put in an event's "kind" (hj212_equipment_state, jt808_register, ...).
EVENT_KIND_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
