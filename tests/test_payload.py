import inspect
import sys
import time
from typing import get_type_hints

import orjson
import pytest

from wulian.core.const import Kind, Stream
from wulian.core.model import Decoded
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.codecs.registry import CODECS, decode_message, decoder
from wulian.ingest.codecs.telemetry import decode_telemetry, parse_ts
from wulian.ingest.topics import parse_topic

NOW = time.time_ns()
LIM = PayloadLimits()


def dec(stream, doc, raw=None):
    return decode_message(stream, Kind.TELEMETRY, raw if raw is not None else orjson.dumps(doc), NOW, LIM)


def test_single_and_batch_scalar_records():
    ts = NOW // 1_000_000
    one = dec(Stream.POLLUTION, {"ts": ts, "values": {"SO2": 1.5, "NOx": {"value": 2, "flag": "M"}}})
    assert [(r.metric, r.value, r.flag) for r in one.readings] == [("SO2", 1.5, "N"), ("NOx", 2.0, "M")]
    assert one.readings[0].ts_ns == ts * 1_000_000
    batch = dec(Stream.AIR, {"batch": [{"ts": ts, "values": {"PM25": 3}}, {"ts": ts + 1000, "values": {"PM25": 4}}]})
    assert [r.value for r in batch.readings] == [3.0, 4.0]
    arr = dec(Stream.WATER, [{"ts": ts, "values": {"DO": 6}, "flag": "C"}])
    assert arr.readings[0].flag == "C"


def test_iso_timestamps_with_offset_and_naive_utc():
    assert parse_ts("2026-11-26T10:00:00+08:00") == parse_ts("2026-11-26T02:00:00Z") == parse_ts("2026-11-26T02:00:00")
    assert parse_ts("2026-11-26T02:00:00.123456Z") % 1_000_000_000 == 123_456_000


def test_vehicle_and_traffic_records():
    ts = NOW // 1_000_000
    v = dec(Stream.VEHICLE, {"ts": ts, "lat": 23.35, "lon": 116.68, "speed": 62.5, "alarm": 2, "status": 3})
    assert v.positions[0].speed_kmh == 62.5 and v.positions[0].alarm_bits == 2
    t = dec(Stream.TRAFFIC, {"ts": ts, "speed": 41.0, "flow": 900})
    assert t.traffic[0].flow_vph == 900.0 and t.traffic[0].occupancy is None


@pytest.mark.parametrize(
    "stream,raw,reason",
    [
        (Stream.POLLUTION, b"{not json", "bad_json"),
        (Stream.POLLUTION, b'{"ts": 1, "values": {"SO2": NaN}}', "bad_json"),  # NaN is not JSON
        (Stream.POLLUTION, b'{"ts": 1795658400000, "values": {"SO2": 1e999}}', "bad_json"),
        (Stream.POLLUTION, b'{"values": {"SO2": 1}}', "bad_ts"),
        (Stream.POLLUTION, b'{"ts": true, "values": {"SO2": 1}}', "bad_ts"),
        (Stream.POLLUTION, b'{"ts": 1795658400000, "values": {"SO2": "12"}}', "bad_value"),
        (Stream.POLLUTION, b'{"ts": 1795658400000, "values": {"SO2": true}}', "bad_value"),
        (Stream.POLLUTION, b'{"ts": 1795658400000, "values": {}}', "bad_values"),
        (Stream.POLLUTION, b'{"ts": 1795658400000, "values": {"x\'; DROP TABLE readings;--": 1}}', "bad_metric"),
        (Stream.POLLUTION, b'{"ts": 1795658400000, "values": {"SO2": {"value": 1, "flag": "Q"}}}', "bad_flag"),
        # no HJ 212 edition defines H or V (2017 Table 8, 2005 flag list): unknown, not stored as valid
        (Stream.POLLUTION, b'{"ts": 1795658400000, "values": {"SO2": {"value": 1, "flag": "H"}}}', "bad_flag"),
        (Stream.POLLUTION, b'{"ts": 1795658400000, "flag": "V", "values": {"SO2": 1}}', "bad_flag"),
        (Stream.POLLUTION, b"[]", "empty"),
        (Stream.POLLUTION, b"[1, 2]", "bad_record"),
        (Stream.VEHICLE, b'{"ts": 1795658400000, "lat": 91, "lon": 10}', "bad_position"),
        (Stream.VEHICLE, b'{"ts": 1795658400000, "lat": 1, "lon": 10, "alarm": -1}', "bad_value"),
        (Stream.TRAFFIC, b'{"ts": 1795658400000, "speed": -3}', "bad_value"),
    ],
)
def test_bad_payloads_are_refused_with_reason(stream, raw, reason):
    with pytest.raises(CodecError) as e:
        decode_message(stream, Kind.TELEMETRY, raw, 1795658400000 * 1_000_000, LIM)
    assert e.value.reason == reason


def test_time_policy_future_and_past():
    future = (NOW + 3600 * 10**9) // 1_000_000
    with pytest.raises(CodecError, match="ts_in_future"):
        dec(Stream.AIR, {"ts": future, "values": {"PM25": 1}})
    with pytest.raises(CodecError, match="ts_too_old"):
        dec(Stream.AIR, {"ts": "1990-01-01T00:00:00Z", "values": {"PM25": 1}})


def test_size_and_depth_limits():
    with pytest.raises(CodecError, match="too_large"):
        decode_telemetry(Stream.AIR, b" " * (LIM.max_bytes + 1), LIM)
    deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(CodecError) as e:
        decode_telemetry(Stream.AIR, deep, LIM)
    assert e.value.reason == "bad_json"


@pytest.mark.parametrize(
    "topic",
    ["wl/shantou/pollution/dev1", "xx/shantou/pollution/dev1/telemetry", "wl/Shantou/pollution/dev1/telemetry",
     "wl/shantou/bogus/dev1/telemetry", "wl/shantou/pollution/dev 1/telemetry", "wl/shantou/pollution/dev1/xml",
     "wl/shantou/alerts/pollution/dev1"],
)
def test_bad_topics(topic):
    with pytest.raises(CodecError, match="bad_topic"):
        parse_topic(topic)


def test_good_topic():
    t = parse_topic("wl/shantou/vehicle/13800138000/jt808")
    assert (t.region, t.stream, t.device_id, t.kind) == ("shantou", Stream.VEHICLE, "13800138000", Kind.JT808)


def test_one_codec_registry_every_kind_with_the_contract_signature():
    """The decode contract is closed: every topic kind has exactly one codec module in ``ingest/codecs/``,
    which declares its KIND and one ``decode_payload`` with the typed ``DecodeFn`` signature."""
    assert set(CODECS) == set(Kind)
    hints = {"stream": Stream, "payload": bytes, "now_ns": int, "limits": PayloadLimits, "return": Decoded}
    for kind in Kind:
        fn = decoder(kind)
        module = sys.modules[fn.__module__]
        assert module.__name__ == f"wulian.ingest.codecs.{'telemetry' if kind is Kind.TELEMETRY else kind.value}"
        assert module.KIND is kind and module.decode_payload is fn
        assert list(inspect.signature(fn).parameters) == ["stream", "payload", "now_ns", "limits"]
        assert get_type_hints(fn) == hints
        assert not hasattr(module, "decode_cli")  # rendering for `wulian decode` is the CLI's (cli/commands/decode.py)


def test_registry_applies_size_and_time_policy_to_every_kind():
    from wulian.ingest.codecs import dlt645

    frame = dlt645.encode_reply("000000000161", 0x00010000, 12.5)
    (reading,) = decode_message(Stream.GRID, Kind.DLT645, frame, NOW, LIM).readings
    assert (reading.ts_ns, reading.value) == (NOW, 12.5)  # a meter frame is stamped with the receive time
    with pytest.raises(CodecError, match="too_large"):
        decode_message(Stream.GRID, Kind.DLT645, frame, NOW, PayloadLimits(max_bytes=len(frame) - 1))
    with pytest.raises(CodecError, match="unsupported_kind"):
        decode_message(Stream.GRID, "xml", frame, NOW, LIM)  # type: ignore[arg-type]
