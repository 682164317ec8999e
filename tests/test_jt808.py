"""JT/T 808 codec: the public vectors, escaping and check, headers, bodies, round trips, fuzzing."""
from __future__ import annotations

import argparse
import json
import logging
import struct
from datetime import datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from wulian.core.timebase import CHINA_TZ as CHINA
from wulian.core.kernels.checksums import xor_bytes
from wulian.cli.commands.decode import render_jt808
from wulian.ingest.codecs import jt808
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.mqtt_client import InMessage
from wulian.ingest.pipeline import Ingestor
from tests.data import load_json
from tests.helpers import mutants

ENTRIES = load_json("vectors/jt808.json")["entries"]


def _by_category(*categories: str) -> list:
    return [pytest.param(e, id=e["id"]) for e in ENTRIES if e["category"] in categories]


def _entry(vector_id: str) -> dict:
    return next(e for e in ENTRIES if e["id"] == vector_id)


def _frame(payload: bytes) -> bytes:
    """Escape header + body with the right check code."""
    return jt808.escape(payload + bytes((xor_bytes(payload),)))


def _china_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=CHINA).timestamp()) * 10**9


def _check_location(loc: jt808.Location, want: dict) -> None:
    assert loc.alarm_bits == want["alarm_flag"]
    assert loc.status_bits == want["status"]
    assert (loc.lat_raw, loc.lon_raw) == (want["latitude_raw"], want["longitude_raw"])
    assert (loc.lat, loc.lon) == (want["latitude_deg"], want["longitude_deg"])
    assert loc.altitude_m == want["altitude_m"]
    assert loc.speed_raw == want["speed_0_1kmh"] and loc.speed_kmh == want["speed_kmh"]
    assert loc.heading == want["direction_deg"]
    assert loc.time_bcd == want["time_bcd"]
    assert loc.ts_ns == _china_ns(want["time"])
    items = [{"id": f"0x{i:02X}", "len": len(v), "value_hex": v.hex().upper()} for i, v in loc.items]
    assert items == want["additional"]
    assert (loc.tail_error is None) == want["additional_well_formed"]
    flags = set(jt808.status_flags(loc.status_bits))
    for name, on in want["status_bits"].items():
        assert (name in flags) == on, name


# --- vectors -------------------------------------------------------------------------------------

def test_vectors_cover_every_category():
    assert {"verified", "known_bad", "quirk"} <= {e["category"] for e in ENTRIES}


@pytest.mark.parametrize("entry", _by_category("verified"))
def test_verified_vector_decodes_to_expected(entry):
    frame = bytes.fromhex(entry["raw_hex"])
    msg = jt808.decode(frame)
    header, expected = entry["expected"]["header"], entry["expected"]
    assert f"0x{msg.msg_id:04X}" == header["msg_id"]
    assert f"0x{msg.props:04X}" == header["props"]
    assert msg.body_len == header["body_len"] == len(msg.body)
    assert msg.encryption == header["encryption"]
    assert msg.subpackage == header["subpackage"]
    assert msg.version_flag == header["version_flag"]
    assert msg.phone == header["phone_bcd"]
    assert msg.serial == header["serial_no"]
    assert msg.edition == ("2019" if header["edition"] == "2019" else "2013")
    assert msg.protocol_version == header.get("protocol_version")
    assert msg.body.hex().upper() == expected["body_hex_unescaped"]
    # the frame re-escapes to exactly its published bytes
    assert jt808.escape(jt808.unescape(frame[1:-1])) == frame
    body, payload = expected["body"], msg.payload
    if msg.msg_id == 0x0200:
        _check_location(payload, body)
        (position,) = jt808.to_decoded(msg).positions
        assert (position.lat, position.lon, position.ts_ns) == (payload.lat, payload.lon, payload.ts_ns)
    elif msg.msg_id == 0x0704:
        assert (len(payload.locations), payload.kind) == (body["count"], body["type"])
        for loc, want in zip(payload.locations, body["items"]):
            _check_location(loc, want)
        assert len(jt808.to_decoded(msg).positions) == body["count"]
    elif msg.msg_id == 0x0100:
        assert (payload.province, payload.city, payload.maker, payload.model, payload.terminal_id,
                payload.plate_color, payload.plate) == (
            body["province_id"], body["city_id"], body["maker_id"], body["terminal_model"],
            body["terminal_id"], body["plate_color"], body["plate_no"])
        (event,) = jt808.to_decoded(msg).events
        assert event["kind"] == "jt808_register" and event["plate"] == body["plate_no"]
    elif msg.msg_id == 0x0102:
        assert payload.code == body["auth_code"]
        assert payload.imei == body.get("imei", "")
        assert payload.software_version == body.get("software_version", "")
        (event,) = jt808.to_decoded(msg).events
        assert "code" not in json.dumps(event)  # the auth code never leaves the gateway
    elif msg.msg_id == 0x0002:
        assert payload is None and msg.body == b""


@pytest.mark.parametrize("entry", _by_category("known_bad"))
def test_known_bad_vector_rejected_for_its_reason(entry):
    verification = entry["verification"]
    reason = "bad_checksum" if not verification["check_ok"] else "truncated"
    with pytest.raises(CodecError) as err:
        jt808.decode(bytes.fromhex(entry["raw_hex"]))
    assert err.value.reason == reason


def test_version_flag_quirk_falls_back_to_2013():
    entry = _entry("jt-quirk-sc-versionflag-2013body")
    msg = jt808.decode(bytes.fromhex(entry["raw_hex"]))
    forced = entry["expected_if_forced_2013"]
    assert msg.version_flag and msg.edition == "2013" and msg.protocol_version is None
    assert (msg.phone, msg.serial, msg.body_len) == (forced["phone_bcd"], forced["serial_no"], forced["body_len"])
    assert msg.payload.code == forced["auth_code"]


def test_same_body_same_location_in_2013_and_2019_headers():
    msg = jt808.decode(bytes.fromhex(_entry("jt-yzh-0200-2019")["raw_hex"]))
    again = jt808.decode(jt808.encode(0x0200, msg.phone[-12:], msg.serial, msg.body, edition="2013"))
    assert again.edition == "2013" and again.payload == msg.payload
    extra = msg.payload.extra
    assert extra["mileage_km"] == 1.1 and extra["fuel_l"] == 2.2 and extra["tacho_speed_kmh"] == 3.3
    assert extra["alarm_event_id"] == 44 and extra["carriage_temp_c"] == 2
    assert extra["tyre_pressure_pa"][:4] == [55, 55, 55, 0]
    assert extra["overspeed"] == {"area_type": 0x42, "area_id": 0x42}
    assert extra["area_in_out"] == {"area_type": 0x4D, "area_id": 0x4D, "out": 0x4D}
    assert extra["route_time"] == {"segment_id": 0x58, "seconds": 0x58, "too_long": 0x58}
    assert (extra["signal_bits"], extra["io_bits"], extra["analog"]) == (0x63, 0x0A, {"ad0": 0x14, "ad1": 0})
    assert (extra["signal_strength"], extra["satellites"]) == (30, 40)


def test_positions_carry_the_frame_edition():
    """The alarm word means different things in 2013 and 2019: each position keeps its frame's edition."""
    body = jt808.location_body(ts_ns=TS, lat=23.0, lon=116.0, alarm_bits=1 << 31)
    for edition in ("2013", "2019"):
        msg = jt808.decode(jt808.encode(0x0200, "13800138000", 1, body, edition=edition))
        assert [p.protocol_edition for p in jt808.to_decoded(msg).positions] == [int(edition)]
        batch = jt808.decode(jt808.encode(0x0704, "13800138000", 2, jt808.batch_body([body, body]), edition=edition))
        assert [p.protocol_edition for p in jt808.to_decoded(batch).positions] == [int(edition)] * 2
    # A 2013 terminal setting the 2019 version flag anyway (the quirk) still speaks 2013.
    raw = bytearray(jt808.unescape(jt808.encode(0x0200, "13800138000", 3, body)[1:-1]))
    raw[2] |= 0x40
    raw[-1] = jt808.xor_check(bytes(raw[:-1]))
    msg = jt808.decode(jt808.escape(bytes(raw)))
    assert msg.version_flag and [p.protocol_edition for p in jt808.to_decoded(msg).positions] == [2013]


# --- escaping and check --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("inner", "reason"),
    [(b"\x01\x7d\x03\x02", "bad_escape"), (b"\x01\x02\x7d", "bad_escape"), (b"\x01\x7e\x02", "bad_escape"),
     (b"\x7d\x7d\x01", "bad_escape")],
)
def test_bad_escapes(inner, reason):
    with pytest.raises(CodecError) as err:
        jt808.unescape(inner)
    assert err.value.reason == reason
    with pytest.raises(CodecError):
        jt808.decode(b"\x7e" + inner + b"\x7e")


def bare_7d_frame(msg_id: int = 0x0002, body: bytes = b"", phone: str = "013800138000") -> tuple[bytes, int]:
    """(frame, serial): a frame whose check code is 0x7D sent unescaped, as some terminals do
    (protocols.md ``jt-bad-gj-unescaped-7d``); the serial is chosen so that the check comes out 0x7D."""
    for serial in range(65536):
        payload = struct.pack(">HH", msg_id, len(body)) + bytes.fromhex(phone) + serial.to_bytes(2, "big") + body
        if xor_bytes(payload) == 0x7D and b"\x7d" not in payload and b"\x7e" not in payload:
            return b"\x7e" + payload + b"\x7d\x7e", serial
    raise AssertionError("no serial gives a 0x7D check code")


def test_bare_7d_check_code_is_repaired_and_says_so():
    frame, serial = bare_7d_frame()
    msg = jt808.decode(frame)
    assert msg.serial == serial and msg.repairs == (jt808.REPAIR_BARE_7D_CHECK,) == ("bare_7d_check",)
    assert jt808.to_decoded(msg).repairs == ("bare_7d_check",)
    with pytest.raises(CodecError) as err:
        jt808.decode(frame, strict_escape=True)
    assert err.value.reason == "bad_escape"
    good = jt808.decode(_frame(frame[1:-2]))  # the properly escaped form: 7D 01
    assert good.serial == serial and good.repairs == () and jt808.to_decoded(good).repairs == ()
    # a location report carries the repair along with its position
    body = jt808.location_body(ts_ns=_china_ns("2024-05-01T08:00:00"), lat=23.3, lon=116.6)
    frame, _ = bare_7d_frame(0x0200, body)
    decoded = jt808.to_decoded(jt808.decode(frame))
    assert decoded.repairs == ("bare_7d_check",) and decoded.positions[0].lat == 23.3


def test_repaired_frame_is_counted_and_logged_by_ingest(caplog):
    body = jt808.location_body(ts_ns=_china_ns("2024-05-01T08:00:00"), lat=23.3, lon=116.6)
    frame, _ = bare_7d_frame(0x0200, body)
    labels = {"kind": "jt808", "reason": "bare_7d_check"}
    before = REGISTRY.get_sample_value("wulian_ingest_repaired_messages_total", labels) or 0.0
    ingestor = Ingestor(None, None, clock_ns=lambda: _china_ns("2024-05-01T08:00:05"))  # type: ignore[arg-type]
    topic = "wl/test/vehicle/13800138000/jt808"
    with caplog.at_level(logging.INFO, logger="wulian.ingest.pipeline"):
        batch = ingestor.decode_batch([InMessage(1, 1, 1, topic, frame),
                                       InMessage(1, 2, 1, topic, _frame(frame[1:-2]))])
    assert not batch.dead and [it.decoded.repairs for it in batch.items] == [("bare_7d_check",), ()]
    assert REGISTRY.get_sample_value("wulian_ingest_repaired_messages_total", labels) == before + 1
    assert [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()] == [
        f"repaired message: topic={topic} device=13800138000 repairs=bare_7d_check"]


@given(st.binary(max_size=200))
def test_escape_round_trip(payload):
    frame = jt808.escape(payload)
    assert frame.count(b"\x7e") == 2
    assert jt808.unescape(frame[1:-1]) == payload


# --- header --------------------------------------------------------------------------------------

def test_length_mismatch_and_truncation():
    head = b"\x00\x02\x00\x05" + bytes.fromhex("013800138000") + b"\x00\x01"
    with pytest.raises(CodecError) as err:
        jt808.decode(_frame(head + b"\x00\x00"))  # props say 5 body bytes, 2 present
    assert err.value.reason == "truncated"
    with pytest.raises(CodecError) as err:
        jt808.decode(_frame(head + b"\x00" * 9))
    assert err.value.reason == "length_mismatch"
    with pytest.raises(CodecError) as err:
        jt808.decode(b"\x7e\x7e")
    assert err.value.reason == "truncated"
    for bad in (b"", b"\x7e", b"\x00\x02\x7e", b"\x7e\x00\x02"):
        with pytest.raises(CodecError) as err:
            jt808.decode(bad)
        assert err.value.reason == "bad_frame"


def test_bad_bcd_phone_and_time():
    with pytest.raises(CodecError) as err:
        jt808.decode(_frame(b"\x00\x02\x00\x00" + bytes.fromhex("01380013800a") + b"\x00\x01"))
    assert err.value.reason == "bad_bcd"
    body = bytearray(jt808.location_body(ts_ns=1_700_000_000 * 10**9, lat=1, lon=1))
    body[22:28] = bytes.fromhex("23011A120000")
    with pytest.raises(CodecError) as err:
        jt808.decode(jt808.encode(0x0200, "1", 1, bytes(body)))
    assert err.value.reason == "bad_bcd"
    body[22:28] = bytes(6)  # a BCD-valid but impossible time (terminals without a fix send it)
    with pytest.raises(CodecError) as err:
        jt808.decode(jt808.encode(0x0200, "1", 1, bytes(body)))
    assert err.value.reason == "bad_time"


def test_subpackage_header_and_encrypted_body_left_raw():
    msg = jt808.decode(jt808.encode(0x0200, "13800138000", 7, b"\x01\x02\x03", package=(3, 2)))
    assert msg.subpackage and (msg.total, msg.seq) == (3, 2) and msg.body == b"\x01\x02\x03"
    assert msg.payload is None and not jt808.to_decoded(msg).positions
    msg = jt808.decode(jt808.encode(0x0200, "13800138000", 8, b"\x00" * 28, encryption=1))
    assert msg.encryption == 1 and msg.payload is None
    msg = jt808.decode(jt808.encode(0x0200, "12345678901234567890", 9, b"\xaa", edition="2019", package=(2, 1)))
    assert (msg.edition, msg.phone, msg.total, msg.seq, msg.body) == ("2019", "12345678901234567890", 2, 1, b"\xaa")


def test_join_packages_reassembles_a_long_batch():
    bodies = [jt808.location_body(ts_ns=TS + i * 10**9, lat=21, lon=110, items=[(0xE1, bytes(200))])
              for i in range(6)]
    whole = jt808.batch_body(bodies)
    assert len(whole) > 1023
    chunks = [whole[i:i + 1000] for i in range(0, len(whole), 1000)]
    frames = [jt808.encode(0x0704, "13800138000", 40 + k, chunk, package=(len(chunks), k + 1))
              for k, chunk in enumerate(chunks)]
    parts = [jt808.decode(f) for f in reversed(frames)]
    msg = jt808.join_packages(parts)
    assert (msg.msg_id, msg.serial, msg.body, msg.subpackage, msg.total) == (0x0704, 40, whole, False, None)
    assert msg.body_len == len(whole)
    assert [p.ts_ns for p in jt808.to_decoded(msg).positions] == [TS + i * 10**9 for i in range(6)]
    for bad in (parts[1:], parts + parts[:1], [jt808.decode(jt808.encode(0x0002, "13800138000", 1))], []):
        with pytest.raises(CodecError) as err:
            jt808.join_packages(bad)
        assert err.value.reason == "bad_package"


# --- bodies --------------------------------------------------------------------------------------

TS = _china_ns("2024-05-06T07:08:09")


def test_location_flags_signs_and_items():
    body = jt808.location_body(
        ts_ns=TS, lat=-33.868820, lon=-151.209296, speed_kmh=88.8, heading=271, altitude_m=58,
        alarm_bits=(1 << 0) | (1 << 15) | (1 << 31), status_bits=0b11 | (3 << 8) | (1 << 22),
        items=[(0x06, (0x8000 | 15).to_bytes(2, "big")), (0x11, b"\x00"), (0xE1, b"\x01\x02"), (0x01, b"\x00\x01")],
    )
    msg = jt808.decode(jt808.encode(0x0200, "13800138000", 1, body))
    loc = msg.payload
    assert (loc.lat, loc.lon, loc.speed_kmh, loc.heading, loc.altitude_m, loc.ts_ns) == (
        -33.86882, -151.209296, 88.8, 271, 58, TS)
    assert loc.extra["carriage_temp_c"] == -15
    assert loc.extra["overspeed"] == {"area_type": 0, "area_id": None}
    assert loc.extra["raw"] == {"0xE1": "0102", "0x01": "0001"}  # unknown id; mileage of a wrong length
    assert "mileage_km" not in loc.extra
    assert jt808.alarm_flags(loc.alarm_bits, "2013") == ["emergency", "bit15", "illegal_door_open"]
    assert jt808.alarm_flags(loc.alarm_bits, "2019") == ["emergency", "violation_driving", "bit31"]
    status = jt808.status_flags(loc.status_bits, "2019")
    assert {"acc_on", "positioned", "south", "west", "full_load", "driving"} == set(status)
    assert "driving" not in jt808.status_flags(loc.status_bits, "2013")
    (position,) = jt808.to_decoded(msg).positions
    assert (position.lat, position.lon, position.speed_kmh, position.heading) == (-33.86882, -151.209296, 88.8, 271.0)
    assert position.alarm_bits == loc.alarm_bits and position.status_bits == loc.status_bits
    assert position.mileage_km is None and position.extra is loc.extra


def test_malformed_item_tail_keeps_the_basic_part():
    body = jt808.location_body(ts_ns=TS, lat=21.2, lon=110.4, items=[(0x01, b"\x00\x00\x00\x10")]) + b"\xfb\x02\x01"
    msg = jt808.decode(jt808.encode(0x0200, "13800138000", 2, body))
    loc = msg.payload
    assert loc.lat == 21.2 and loc.extra["mileage_km"] == 1.6
    assert loc.tail_error == "item 0xFB declares 2 bytes, 1 left" == loc.extra["tail_error"]
    assert len(jt808.to_decoded(msg).positions) == 1
    with pytest.raises(CodecError) as err:
        jt808.decode(jt808.encode(0x0200, "13800138000", 2, body[:27]))
    assert err.value.reason == "truncated"


def test_batch_upload_and_backfill():
    bodies = [jt808.location_body(ts_ns=TS + i * 10**9, lat=21 + i / 1000, lon=110, speed_kmh=i) for i in range(3)]
    msg = jt808.decode(jt808.encode(0x0704, "13800138000", 3, jt808.batch_body(bodies, kind=1)))
    assert msg.payload.kind == 1 and len(msg.payload.locations) == 3
    decoded = jt808.to_decoded(msg)
    assert [p.ts_ns for p in decoded.positions] == [TS, TS + 10**9, TS + 2 * 10**9]
    assert decoded.events == [{"kind": "jt808_backfill", "serial": 3, "count": 3}]
    cut = jt808.batch_body(bodies)[:-5]
    with pytest.raises(CodecError) as err:
        jt808.decode(jt808.encode(0x0704, "13800138000", 3, cut))
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("layout", ["2011", "2013", "2019"])
def test_register_layouts(layout):
    body = jt808.register_body(province=44, city=800, maker="ZX01", model="M-1", terminal_id="T0001",
                               plate_color=2, plate="粤G12345", layout=layout)
    edition = "2019" if layout == "2019" else "2013"
    phone = "12345678901234567890" if edition == "2019" else "13800138000"
    msg = jt808.decode(jt808.encode(0x0100, phone, 4, body, edition=edition))
    assert msg.payload == jt808.Register(44, 800, "ZX01", "M-1", "T0001", 2, "粤G12345", layout)


@pytest.mark.parametrize("edition", ["2013", "2019"])
def test_auth_and_answers(edition):
    phone = "13800138000"
    body = jt808.auth_body("AUTH-42", edition=edition, imei="860000000000001", software_version="1.2.3")
    msg = jt808.decode(jt808.encode(0x0102, phone, 5, body, edition=edition))
    want = jt808.Auth("AUTH-42", "860000000000001", "1.2.3") if edition == "2019" else jt808.Auth("AUTH-42")
    assert msg.payload == want
    answer = jt808.decode(jt808.platform_answer(msg, 0, serial=900))
    assert (answer.msg_id, answer.edition, answer.serial) == (0x8001, edition, 900)
    assert answer.phone.lstrip("0") == phone.lstrip("0") == msg.terminal_phone == answer.terminal_phone
    assert answer.payload == jt808.GeneralAnswer(5, 0x0102, 0)
    reg = jt808.decode(jt808.encode(0x0100, phone, 6, jt808.register_body(
        province=1, city=2, maker="M", model="X", terminal_id="T", plate_color=1, plate="A1",
        layout="2019" if edition == "2019" else "2013"), edition=edition))
    ok = jt808.decode(jt808.register_answer(reg, 0, "secret-code", serial=901))
    assert ok.msg_id == 0x8100 and ok.payload == jt808.RegisterAnswer(6, 0, "secret-code")
    refused = jt808.decode(jt808.register_answer(reg, 3, "secret-code", serial=902))
    assert refused.payload == jt808.RegisterAnswer(6, 3, "")
    terminal = jt808.decode(jt808.encode(0x0001, phone, 7, jt808.general_answer_body(901, 0x8100, 0)))
    assert terminal.payload == jt808.GeneralAnswer(901, 0x8100, 0)


def test_encoder_limits():
    with pytest.raises(CodecError) as err:
        jt808.encode(0x0200, "13800138000", 1, b"\x00" * 1024)
    assert err.value.reason == "too_large"
    with pytest.raises(CodecError) as err:
        jt808.encode(0x0200, "1380013800012", 1)
    assert err.value.reason == "bad_bcd"


# --- round trips ---------------------------------------------------------------------------------

_items = st.lists(
    st.tuples(st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x25, 0x2A, 0x30, 0x31, 0x7D, 0x7E, 0xE0, 0xFF]),
              st.binary(max_size=8)),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(
    ts=st.integers(946_656_000, 4_102_415_999).map(lambda s: s * 10**9),  # 2000..2099 China time
    lat=st.floats(-90, 90), lon=st.floats(-180, 180), speed=st.floats(0, 6553.5),
    heading=st.integers(0, 359), altitude=st.integers(0, 65535),
    alarm=st.integers(0, 2**32 - 1), status=st.integers(0, 2**32 - 1),
    serial=st.integers(0, 65535), phone=st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    edition=st.sampled_from(["2013", "2019"]), items=_items,
)
@example(ts=946_656_000 * 10**9, lat=0.0, lon=0.0, speed=0.35, heading=0, altitude=0, alarm=0, status=0, serial=0,
         phone="0", edition="2013", items=[])  # 3.5 tenths rounds to 4: 0.05 away, plus float error
def test_location_round_trip(ts, lat, lon, speed, heading, altitude, alarm, status, serial, phone, edition, items):
    body = jt808.location_body(ts_ns=ts, lat=lat, lon=lon, speed_kmh=speed, heading=heading, altitude_m=altitude,
                               alarm_bits=alarm, status_bits=status, items=items)
    frame = jt808.encode(0x0200, phone, serial, body, edition=edition)
    msg = jt808.decode(frame)
    assert (msg.serial, msg.edition, msg.phone.lstrip("0"), msg.body) == (serial, edition, phone.lstrip("0"), body)
    (position,) = jt808.to_decoded(msg).positions
    assert position.ts_ns == ts
    assert abs(position.lat - lat) <= 5e-7 and abs(position.lon - lon) <= 5e-7
    # speed travels as a WORD in 1/10 km/h: off by at most half a step, plus float error (0.35 -> 0.4)
    assert abs(position.speed_kmh - speed) <= 0.05 + 1e-9 and position.heading == heading
    assert position.altitude_m == altitude and position.alarm_bits == alarm
    assert msg.payload.items == tuple((i, v) for i, v in items)
    assert jt808.escape(jt808.unescape(frame[1:-1])) == frame


# --- streaming -----------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=6))
def test_split_frames_reassembles_any_chunking(cuts):
    frames = [bytes.fromhex(e["raw_hex"]) for e in ENTRIES[:4]]
    stream = frames[0] + b"\x00junk" + frames[1] + frames[2] + b"\x7e" + frames[3][:10]
    got, rest, previous = [], b"", 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        parts, rest = jt808.split_frames(rest + stream[previous:cut])
        got += parts
        previous = max(previous, cut)
    assert [p for p in got if p.startswith(b"\x7e")] == frames[:3]
    assert rest == frames[3][:10]
    for junk in (p for p in got if not p.startswith(b"\x7e")):
        with pytest.raises(CodecError) as err:
            jt808.decode(junk)
        assert err.value.reason == "bad_frame"


def test_split_frames_limit():
    with pytest.raises(CodecError) as err:
        jt808.split_frames(b"\x7e" + b"\x01" * 100, max_size=50)
    assert err.value.reason == "too_large"
    frame = bytes.fromhex(_entry("jt-sc-0002-escaped-check")["raw_hex"])
    frames, rest = jt808.split_frames(frame + b"\x7e" + b"\x01" * 100, max_size=50)
    assert frames == [frame] and rest.startswith(b"\x7e\x01")


# --- fuzzing -------------------------------------------------------------------------------------

_SEEDS = [bytes.fromhex(e["raw_hex"]) for e in ENTRIES]


_mutants = mutants(_SEEDS, b"\x7e\x7d\x01\x02\x00\xff")


@st.composite
def _refixed(draw):
    """A mutated body with a recomputed check code, so that body parsing is reached too."""
    msg = jt808.decode(draw(st.sampled_from([s for s in _SEEDS if _decodes(s)])))
    body = bytearray(msg.body)
    for _ in range(draw(st.integers(1, 3))):
        if body and draw(st.booleans()):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        else:
            del body[draw(st.integers(0, len(body))):]
    return jt808.encode(msg.msg_id, msg.phone[-12:], msg.serial, bytes(body), edition=msg.edition)


def _decodes(frame: bytes) -> bool:
    try:
        jt808.decode(frame)
    except CodecError:
        return False
    return True


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_mutants | _refixed() | st.binary(max_size=120))
def test_mutations_raise_only_codec_errors(raw):
    for strict in (True, False):
        try:
            msg = jt808.decode(raw, strict_escape=strict)
        except CodecError:
            continue
        jt808.to_decoded(msg)
        if not msg.msg_id & 0x8000:
            jt808.platform_answer(msg, serial=1)
    try:
        json.dumps(render_jt808(raw.hex()))
    except CodecError:
        pass
    try:
        jt808.split_frames(raw, max_size=64)
    except CodecError as exc:
        assert exc.reason == "too_large"


# --- CLI -----------------------------------------------------------------------------------------

def test_decode_cli_and_command(capsys):
    raw_hex = _entry("jt-sc-0200-readme-escaped")["raw_hex"]
    spaced = " ".join(raw_hex[i:i + 2] for i in range(2, len(raw_hex) - 2, 2))  # no 7E flags, spaces
    out = render_jt808(spaced)
    assert out["msg_id"] == "0x0200" and out["serial"] == 126
    assert out["body"]["alarms"] == ["emergency"] and out["body"]["status"] == ["positioned"]
    assert out["body"]["items"] == [{"id": "0x01", "value": "00000064"}, {"id": "0x02", "value": "007D"}]
    assert out["positions"][0]["mileage_km"] == 10.0
    json.dumps(out)
    with pytest.raises(CodecError) as err:
        render_jt808("7E zz 7E")
    assert err.value.reason == "bad_hex"

    # the `wulian decode` command itself (not the whole CLI, whose discovery imports every command)
    from wulian.cli.commands import decode as command

    def main(argv: list[str]) -> int:
        return command.run(argparse.Namespace(kind=argv[1], data=argv[2]))

    assert main(["decode", "jt808", raw_hex]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["phone"] == "123456789012" and out["repairs"] == []
    assert main(["decode", "jt808", bare_7d_frame()[0].hex()]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["repairs"] == ["bare_7d_check"] and out["msg_id"] == "0x0002"
    assert main(["decode", "jt808", _entry("jt-bad-fy-check")["raw_hex"]]) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "bad_checksum"
