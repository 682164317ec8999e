"""DL/T 645-2007 and CJ/T 188 codecs against every sample frame in tests/data/standards."""
from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from wulian.cli.commands.decode import render_cjt188, render_dlt645
from wulian.core.timebase import CHINA_TZ
from wulian.ingest.codecs import cjt188, dlt645
from wulian.ingest.codecs.errors import CodecError, parse_hex
from tests.data import load_json

FRAMES = load_json("standards/meter_frames.json")["frames"]
DLT = [f for f in FRAMES if f["protocol"].startswith("DL/T 645")]
CJT = [f for f in FRAMES if f["protocol"].startswith("CJ/T 188")]


def test_sample_file_has_both_protocols():
    assert len(DLT) >= 5 and len(CJT) >= 3


@pytest.mark.parametrize("sample", DLT, ids=[f["id"] for f in DLT])
def test_dlt645_sample(sample):
    exp = sample["decoded_by_collector"]
    msg = dlt645.decode(parse_hex(sample["hex"]))
    assert msg.preamble == exp["preamble_FE_count"]
    assert msg.address == exp["address"]
    assert f"{msg.control:02X}" == exp["control"]
    assert len(msg.data) == exp["length"]
    assert msg.data.hex(" ").upper() == exp["data_minus_33"]
    assert f"{msg.checksum:02X}" == exp["checksum"]
    cli = render_dlt645(sample["hex"])
    if "DI" in exp:
        assert cli["DI"] == exp["DI"]
        assert cli["DI_name"] == exp["DI_name"]
    if "reported_address" in exp:
        assert cli["reported_address"] == exp["reported_address"]
    # Round trip: re-encoding the parsed fields gives the same bytes.
    again = dlt645.encode(msg.address, msg.control, msg.data, preamble=msg.preamble)
    assert again == parse_hex(sample["hex"])


@pytest.mark.parametrize("sample", CJT, ids=[f["id"] for f in CJT])
def test_cjt188_sample(sample):
    exp = sample["decoded_by_collector"]
    msg = cjt188.decode(parse_hex(sample["hex"]))
    assert msg.preamble == exp["preamble_FE_count"]
    assert f"{msg.meter_type:02X}" == exp["meter_type"]
    assert msg.address == exp["address_reversed"]
    assert f"{msg.control:02X}" == exp["control"]
    assert len(msg.data) == exp["length"]
    assert f"{msg.checksum:02X}" == exp["checksum_computed"] == exp["checksum"]
    assert msg.di == 0x901F
    cli = render_cjt188(sample["hex"])
    assert cli["DI_bytes_as_sent"] == exp["DI_bytes_as_sent"]
    assert cli["SER"] == exp["SER"]
    if "current_cumulative" in exp:
        assert cli["current_cumulative"]["value"] == pytest.approx(exp["current_cumulative"]["value"])
        assert cli["current_cumulative"]["unit_code"] == exp["current_cumulative"]["unit_code"]
        assert cli["settlement_day_cumulative"]["value"] == pytest.approx(
            exp["settlement_day_cumulative"]["value"])
        assert cli["status_ST"] == exp["status_ST"]
        if exp["real_time"].startswith("0000"):
            assert cli["real_time"] is None
        else:
            assert cli["real_time"] == exp["real_time"]
        dec = cjt188.to_decoded(msg, 123)
        assert [r.metric for r in dec.readings] == ["water_volume_m3", "water_volume_settlement_m3"]
        assert dec.readings[0].value == pytest.approx(exp["current_cumulative"]["value"])
        assert dec.readings[0].ts_ns == 123


def test_dlt645_reply_roundtrip_and_readings():
    cases = [(0x00010000, 0.26), (0x00020000, 1.26), (0x00030000, 100.26), (0x02010100, 100.1),
             (0x02020100, -1.234), (0x02030000, 12.3456), (0x02060000, -0.875), (0x02800002, 49.98)]
    for di, value in cases:
        frame = dlt645.encode_reply("000000000161", di, value)
        msg = dlt645.decode(frame)
        assert msg.is_reply and msg.di == di
        dec = dlt645.to_decoded(msg, 7)
        assert len(dec.readings) == 1
        assert dec.readings[0].metric == dlt645.QUANTITIES[di].metric
        assert dec.readings[0].value == pytest.approx(value)


def test_dlt645_request_gives_event_not_reading():
    msg = dlt645.decode(dlt645.encode_read("000000000161", 0x00010000))
    dec = dlt645.to_decoded(msg, 1)
    assert dec.readings == [] and dec.events[0]["di"] == "00010000"


def test_dlt645_energy_bcd_layout():
    # 0.26 kWh as XXXXXX.XX low byte first: 26 00 00 00, each +0x33 on the wire.
    frame = dlt645.encode_reply("000000000161", 0x00010000, 0.26, preamble=0)
    assert frame[10:18].hex() == "3333343359333333"


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b[:-2] + bytes([(b[-2] + 1) & 0xFF]) + b[-1:], "bad_checksum"),
    (lambda b: b[:-1] + b"\x17", "bad_end"),
    (lambda b: b[:9] + bytes([b[9] + 1]) + b[10:], "length_mismatch"),
    (lambda b: b"\x69" + b[1:], "bad_start"),
    (lambda b: b[:5], "too_short"),
])
def test_dlt645_rejections(mutate, reason):
    good = parse_hex(DLT[0]["hex"])
    with pytest.raises(CodecError) as exc:
        dlt645.decode(mutate(good))
    assert exc.value.reason == reason


def test_bad_hex_is_codec_error():
    with pytest.raises(CodecError) as exc:
        render_dlt645("68 zz")
    assert exc.value.reason == "bad_hex"
    with pytest.raises(CodecError):
        render_cjt188("xyz")


def test_cjt188_bad_checksum_rejected():
    good = parse_hex(CJT[0]["hex"])
    bad = good[:-2] + bytes([(good[-2] + 1) & 0xFF]) + good[-1:]
    with pytest.raises(CodecError) as exc:
        cjt188.decode(bad)
    assert exc.value.reason == "bad_checksum"


def test_cjt188_article_checksum_erratum_rejected():
    # The SC article printed checksum 08; the byte sum is 13, so the printed frame must be rejected.
    sc = next(f for f in CJT if f["id"] == "cjt188-sc-read-resp")
    printed = sc["hex"][:-5] + "08 16"
    with pytest.raises(CodecError):
        cjt188.decode(parse_hex(printed))


def test_cjt188_encode_volume_reply_roundtrip():
    t = datetime(2026, 11, 26, 19, 5, 7, tzinfo=CHINA_TZ)
    frame = cjt188.encode_volume_reply(0x30, "78330011223344", 1234.56, 1200.0, t, b"\x00\x04")
    msg = cjt188.decode(frame)
    rep = cjt188.volume_reply(msg)
    assert rep.current == pytest.approx(1234.56) and rep.settlement == pytest.approx(1200.0)
    assert rep.meter_time == t and rep.status == b"\x00\x04"
    dec = cjt188.to_decoded(msg, 5)
    assert dec.readings[0].metric == "gas_volume_m3"
    assert [(e["status"], e["meter_time"]) for e in dec.events] == [("0004", t.isoformat())]


def test_cjt188_routine_read_with_clear_status_is_readings_only():
    # one device_events row per meter per collection cycle would outgrow the readings themselves
    t = datetime(2026, 11, 26, 19, 5, 7, tzinfo=CHINA_TZ)
    msg = cjt188.decode(cjt188.encode_volume_reply(0x10, "78330011223344", 12.5, 10.0, t, b"\x00\x00"))
    dec = cjt188.to_decoded(msg, 5)
    assert len(dec.readings) == 2 and dec.events == []


def test_decode_cli_command_table_reaches_codecs():
    from wulian.cli.commands.decode import RENDERERS
    assert RENDERERS["dlt645"] is render_dlt645 and RENDERERS["cjt188"] is render_cjt188


def test_missing_time_policy():
    # DL/T 645 replies carry no time: refused without one; requests still give their event.
    reply = dlt645.decode(dlt645.encode_reply("000000000161", 0x00010000, 1.0))
    with pytest.raises(CodecError) as exc:
        dlt645.to_decoded(reply)
    assert exc.value.reason == "no_time"
    assert dlt645.to_decoded(dlt645.decode(dlt645.encode_read("000000000161", 0x00010000))).events
    # CJ/T 188 falls back to the meter clock (China time) and refuses an unset clock.
    sc = cjt188.decode(parse_hex(next(f for f in CJT if f["id"] == "cjt188-sc-read-resp")["hex"]))
    dec = cjt188.to_decoded(sc)
    expect = int(datetime(2015, 5, 11, 22, 1, 31, tzinfo=CHINA_TZ).timestamp()) * 10**9
    assert dec.readings[0].ts_ns == expect
    aixi = cjt188.decode(parse_hex(next(f for f in CJT if f["id"] == "cjt188-aixi-read-resp")["hex"]))
    with pytest.raises(CodecError):
        cjt188.to_decoded(aixi)


# DL/T 645-2007 Table A.1 note: combined active / reactive energies (组合有功, 组合无功1/2; totals, tariffs,
# per phase, settlement days) carry the sign in the top bit of the highest byte, range +/-799999.99.
COMBINED_DIS = [0x00000000, 0x00030000, 0x00040000, 0x00000100, 0x00030400, 0x00043F00,
                0x00000001, 0x0003000C, 0x00170000, 0x00180000, 0x002B0000, 0x002C0000, 0x003F0000, 0x00400000]
UNSIGNED_ENERGY_DIS = [0x00010000, 0x00020000, 0x00010100, 0x00150000, 0x00160000, 0x002A0000]


@pytest.mark.parametrize("di", COMBINED_DIS, ids=[f"{d:08X}" for d in COMBINED_DIS])
def test_dlt645_combined_energy_is_signed(di):
    # The meter's reply for -1.26: data 26 01 00 80 after subtracting 0x33 (was read as 800001.26).
    frame = dlt645.encode("000000000161", 0x91, di.to_bytes(4, "little") + bytes.fromhex("26010080"))
    q, value = dlt645.value_of(dlt645.decode(frame))
    assert q.signed and value == -1.26
    assert dlt645.encode_reply("000000000161", di, -1.26) == frame  # was written as +1.26 (26 01 00 00)
    assert render_dlt645(frame.hex())["value"] == -1.26
    dec = dlt645.to_decoded(dlt645.decode(frame), 9)
    if q.metric is not None:
        assert [(r.metric, r.value) for r in dec.readings] == [(q.metric, -1.26)]
    else:  # a settlement-day register: frozen at a date the frame does not carry, so an event
        assert dec.readings == [] and dec.events[0]["value"] == -1.26


def test_dlt645_combined_energy_range_and_unsigned_energies():
    addr = "000000000161"
    for v in (799999.99, -799999.99):
        assert dlt645.value_of(dlt645.decode(dlt645.encode_reply(addr, 0x00000000, v)))[1] == v
    with pytest.raises(CodecError) as exc:
        dlt645.encode_reply(addr, 0x00000000, 800000.0)  # would set the sign bit
    assert exc.value.reason == "value_out_of_range"
    for di in UNSIGNED_ENERGY_DIS:  # forward/reverse energies are unsigned: 0..999999.99, the top bit is a digit
        frame = dlt645.encode(addr, 0x91, di.to_bytes(4, "little") + bytes.fromhex("26010080"))
        assert dlt645.value_of(dlt645.decode(frame))[1] == 800001.26
        with pytest.raises(CodecError) as exc:
            dlt645.encode_reply(addr, di, -1.26)  # was silently written as +1.26
        assert exc.value.reason == "value_out_of_range"
    assert dlt645.QUANTITIES[0x00000000].metric == "energy_active_combined_kwh"
    assert dlt645.QUANTITIES[0x00170000].name_zh == "A相组合无功1电能"


@hsettings(max_examples=300, deadline=None)
@given(cents=st.integers(-79_999_999, 79_999_999), di=st.sampled_from(COMBINED_DIS))
def test_dlt645_combined_energy_value_roundtrip(cents, di):
    v = cents / 100
    msg = dlt645.decode(dlt645.encode_reply("000000000161", di, v))
    assert dlt645.value_of(msg)[1] == v


@hsettings(max_examples=300, deadline=None)
@given(magnitude=st.integers(0, 79_999_999), negative=st.booleans(), di=st.sampled_from(COMBINED_DIS))
def test_dlt645_combined_energy_bytes_roundtrip(magnitude, negative, di):
    # Reference BCD built independently: 8 decimal digits, low byte first, sign in bit 7 of the last byte.
    raw = bytearray(bytes.fromhex(f"{magnitude:08d}")[::-1])
    if negative:
        raw[-1] |= 0x80
    frame = dlt645.encode("000000000161", 0x91, di.to_bytes(4, "little") + bytes(raw))
    value = dlt645.value_of(dlt645.decode(frame))[1]
    assert value == (-magnitude if negative else magnitude) / 100
    assert dlt645.encode_reply("000000000161", di, value) == frame  # -0.00 keeps its sign bit too


def test_dlt645_error_reply_is_an_event():
    # C = D1 (reply + error bit), DATA = ERR: an event with the error byte, no reading.
    msg = dlt645.decode(dlt645.encode("000000000161", 0xD1, b"\x02"))
    dec = dlt645.to_decoded(msg, 3)
    assert dec.readings == [] and dec.events[0]["error"] is True and dec.events[0]["error_code"] == 2


# CJ/T 188 abnormal replies: control D7 = 1 (from the meter) and D6 = 1 (通讯异常), DATA = SER ST ST (L = 03);
# some meters put the DI first. They are the meter's error answer, not a short 901F reply.
@pytest.mark.parametrize("data,di", [(bytes([0x05, 0x00, 0x04]), None),
                                     (bytes([0x1F, 0x90, 0x05, 0x00, 0x04]), "901F"),
                                     (bytes([0x90, 0x1F, 0x05, 0x00, 0x04]), "901F")],
                         ids=["ser-st", "di-swapped-ser-st", "di-ser-st"])
def test_cjt188_abnormal_reply_is_an_error_event(data, di):
    frame = cjt188.encode(0x10, "78330011223344", 0xC1, data)
    msg = cjt188.decode(frame)  # the DI form was refused as length_mismatch (read as a 901F reply)
    assert msg.is_abnormal and msg.function == 0x01 and msg.ser == 0x05 and msg.status == b"\x00\x04"
    assert cjt188.volume_reply(msg) is None
    dec = cjt188.to_decoded(msg, 11)
    assert dec.readings == []
    assert len(dec.events) == 1
    ev = dec.events[0]
    assert (ev["error"], ev["status"], ev["ser"], ev["control"], ev["ts_ns"]) == (True, "0004", 5, 0xC1, 11)
    assert ev.get("di") == di
    cli = render_cjt188(frame.hex())
    assert cli["abnormal"] is True and cli["status_ST"] == "00 04" and cli["SER"] == "05" and cli["DI"] == di
    assert "current_cumulative" not in cli


def test_cjt188_abnormal_reply_encoder_and_rejections():
    frame = cjt188.encode_abnormal_reply(0x30, "78330011223344", 0x15, b"\x01\x00", ser=7, preamble=0)
    assert frame.hex(" ").upper() == "68 30 44 33 22 11 00 33 78 D5 03 07 01 00 " + \
        f"{sum(frame[:-2]) & 0xFF:02X} 16"
    msg = cjt188.decode(frame)
    assert msg.is_abnormal and msg.function == 0x15 and msg.status == b"\x01\x00"
    # Normal replies are not abnormal; an abnormal reply of any other shape is refused with its own reason.
    assert not cjt188.decode(parse_hex(CJT[0]["hex"])).is_abnormal
    for bad in (b"", b"\x05\x00", bytes([0x12, 0x34, 0x05, 0x00, 0x04]), bytes(22)):
        with pytest.raises(CodecError) as exc:
            cjt188.decode(cjt188.encode(0x10, "78330011223344", 0xC1, bad))
        assert exc.value.reason == "bad_abnormal_reply"
