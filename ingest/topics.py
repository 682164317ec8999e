"""Topic grammar ``{prefix}/{region}/{stream}/{device_id}/{kind}`` (README: topics)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN, Kind, Stream
from wulian.ingest.codecs.errors import CodecError
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
        raise CodecError("bad_topic", f"expected {prefix}/region/stream/device/kind")
    _, region, stream, device_id, kind = parts
    if not _REGION_RE.match(region):
        raise CodecError("bad_topic", "invalid region")
    registry = current()
    if stream not in registry:
        raise CodecError("bad_topic", "unknown stream")
    if not _DEVICE_RE.match(device_id):
        raise CodecError("bad_topic", "invalid device id")
    if kind not in _KINDS:
        raise CodecError("bad_topic", "unknown kind")
    return Topic(region, registry.key(stream), device_id, _KINDS[kind])


def subscriptions(prefix: str = "wl") -> list[str]:
    """One filter per registered stream, so ``{prefix}/{region}/alerts/...`` (published by us) is never
    consumed; ingest subscribes to a stream created later when the registry reloads."""
    return [f"{prefix}/+/{name}/+/+" for name in current().names()]


def topic_for(region: str, stream: str, device_id: str, kind: str = "telemetry", prefix: str = "wl") -> str:
    return f"{prefix}/{region}/{stream}/{device_id}/{kind}"
