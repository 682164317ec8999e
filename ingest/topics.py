"""Topic grammar ``{prefix}/{region}/{stream}/{device_id}/{kind}`` (README: topics)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from wulian.core.const import ALERTS_SEGMENT, DEVICE_ID_PATTERN, REGION_PATTERN, Kind, Stream
from wulian.ingest.codecs.errors import BAD_TOPIC, UNKNOWN_STREAM, CodecError
from wulian.ingest.stream_registry import current

_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)
_REGION_RE = re.compile(REGION_PATTERN)
_KINDS = {k.value: k for k in Kind}


@dataclass(frozen=True, slots=True)
class Topic:
    region: str
    stream: Stream | str  # the enum member for a built-in stream, the name for a registry stream
    device_id: str
    kind: Kind


def parse_topic(topic: str, prefix: str = "wl") -> Topic:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != prefix:
        raise CodecError(BAD_TOPIC, f"expected {prefix}/region/stream/device/kind")
    _, region, stream, device_id, kind = parts
    if not _REGION_RE.match(region):
        raise CodecError(BAD_TOPIC, "invalid region")
    registry = current()
    if stream not in registry:
        raise CodecError(BAD_TOPIC, UNKNOWN_STREAM)
    if not _DEVICE_RE.match(device_id):
        raise CodecError(BAD_TOPIC, "invalid device id")
    if kind not in _KINDS:
        raise CodecError(BAD_TOPIC, "unknown kind")
    return Topic(region, registry.key(stream), device_id, _KINDS[kind])


def device_segment(topic: str, prefix: str = "wl") -> str | None:
    """The device id segment of a topic of the grammar's shape, unchecked (None for another shape): what
    cluster routers partition by without knowing the registry; the worker validates the rest."""
    parts = topic.split("/")
    return parts[3] if len(parts) == 5 and parts[0] == prefix else None


def is_alert_event(topic: str, prefix: str = "wl") -> bool:
    """``{prefix}/{region}/alerts/{stream}/{device_id}``: an alert event we published, not device data
    (it has the shape of a data topic, so a wildcard subscription receives it)."""
    parts = topic.split("/", 3)
    return len(parts) == 4 and parts[2] == ALERTS_SEGMENT and parts[0] == prefix


def subscriptions(prefix: str = "wl") -> list[str]:
    """One filter per registered stream, so ``{prefix}/{region}/alerts/...`` (published by us) is never
    consumed; ingest subscribes to a stream created later when the registry reloads."""
    return [f"{prefix}/+/{name}/+/+" for name in current().names()]


def topic_for(region: str, stream: str, device_id: str, kind: str = "telemetry", prefix: str = "wl") -> str:
    return f"{prefix}/{region}/{stream}/{device_id}/{kind}"
