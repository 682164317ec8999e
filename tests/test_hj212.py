"""HJ 212 codec: the public vectors, framing and CRC rules, CP to readings, encoder round trips, fuzzing."""
from __future__ import annotations

import argparse
import json
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wulian.core.timebase import CHINA_TZ as CHINA
from wulian.core.const import DATA_FLAGS, INVALID_FLAGS, VALID_FLAGS
from wulian.core.kernels.checksums import crc_hj212, crc_modbus
from wulian.cli.commands.decode import render_hj212
from wulian.ingest.codecs import hj212, hj212_codes
from wulian.ingest.codecs.errors import CodecError
from tests.data import load_json
from tests.helpers import mutants

ENTRIES = load_json("vectors/hj212.json")["entries"]


def _by_category(*categories: str) -> list:
    return [pytest.param(e, id=e["id"]) for e in ENTRIES if e["category"] in categories]


def _packet(segment: str, *, crc: str | None = None, length: int | None = None, tail: str = "\r\n") -> bytes:
    """A packet around ``segment`` with the right CRC and length unless told otherwise."""
    data = segment.encode("utf-8")
    crc = crc if crc is not None else f"{crc_hj212(data):04X}"
    length = len(data) if length is None else length
    return f"##{length:04d}{segment}{crc}{tail}".encode("utf-8")


def _china_ns(text: str) -> int:
    return int(datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=CHINA).timestamp()) * 10**9


# --- vectors -------------------------------------------------------------------------------------

def test_vectors_cover_every_category():
    categories = {e["category"] for e in ENTRIES}
    assert {"verified", "known_bad"} <= categories
    assert len(_by_category("verified")) >= 5


@pytest.mark.parametrize("entry", _by_category("verified"))
def test_verified_vector_decodes_to_expected(entry):
    packet = hj212.decode(entry["raw"])
    expected = entry["expected"]
    assert packet.fields == expected["header_fields"]
    assert [list(item) for item in packet.cp] == expected["cp_items"]
    assert packet.cp_closed == expected["cp_terminated_with_&&"]
    assert packet.crc_mode == "hj212"
    assert packet.length_ok == entry["verification"]["length_ok"]
    assert packet.cn == entry["cn"]
    flag = expected["flag_decoded"]
    if flag is None:
        assert packet.flag is None and packet.version is None and packet.edition == "2005"
    else:
        assert packet.flag == flag["raw"]
        assert packet.ack_requested == flag["A_ack_required"]
        assert packet.split == flag["D_has_PNUM_PNO"]
        assert packet.version == flag["version_field"]
    # also from bytes, and with the CRC in the other case
    raw = entry["raw"].encode()
    assert hj212.decode(raw) == packet
    swapped = raw[:-6] + raw[-6:-2].swapcase() + raw[-2:]
    assert hj212.decode(swapped).fields == packet.fields


@pytest.mark.parametrize("entry", _by_category("verified", "known_bad", "crc_variant_modbus"))
def test_vector_crcs_match_both_algorithms(entry):
    verification = entry["verification"]
    raw = entry["raw"].encode()
    segment = raw[6:6 + verification["actual_length_bytes"]]
    assert f"{crc_hj212(segment):04X}" == verification["crc_hj212_appendix_a"]
    assert f"{crc_modbus(segment):04X}" == verification["crc_modbus_standard"]


@pytest.mark.parametrize("entry", _by_category("known_bad"))
def test_known_bad_vector_rejected_for_its_reason(entry):
    verification = entry["verification"]
    reason = "length_mismatch" if not verification["length_ok"] else "bad_crc"
    with pytest.raises(CodecError) as err:
        hj212.decode(entry["raw"], crc_modes=hj212.CRC_MODES)
    assert err.value.reason == reason


@pytest.mark.parametrize("entry", _by_category("crc_variant_modbus"))
def test_modbus_variant_only_when_enabled(entry):
    with pytest.raises(CodecError) as err:
        hj212.decode(entry["raw"])
    assert err.value.reason == "bad_crc"
    assert "modbus" in err.value.detail
    packet = hj212.decode(entry["raw"], crc_modes=("hj212", "modbus"))
    assert packet.crc_mode == "modbus"
    assert packet.fields == entry["expected"]["header_fields"]
    assert [list(item) for item in packet.cp] == entry["expected"]["cp_items"]
    assert packet.split and packet.pnum is None  # Flag=3 without PNUM/PNO is tolerated


def _vector(vector_id: str) -> str:
    return next(e["raw"] for e in ENTRIES if e["id"] == vector_id)


def test_2005_codes_become_2017_metrics_with_datatime_in_china_time():
    decoded = hj212.to_decoded(hj212.decode(_vector("hj-xy-2011-0139")))
    got = {r.metric: (r.value, r.flag) for r in decoded.readings}
    # B01 wastewater flow, 011 COD, 060 NH3-N (HJ 212-2017 Table B.1 "原编码")
    assert got == {"w00000-Rtd": (36.91, "N"), "w01018-Rtd": (231.0, "N"), "w21003-Rtd": (1.803, "N")}
    # DataTime=20160824003817000: 17 digits (ms appended), China time
    assert {r.ts_ns for r in decoded.readings} == {_china_ns("20160824003817")}


def test_minute_data_keeps_o3_and_unknown_codes():
    packet = hj212.decode(_vector("hj-flash520-2051"))
    decoded = hj212.to_decoded(packet)
    metrics = {r.metric: r.value for r in decoded.readings}
    assert metrics["a05024-Avg"] == 63.0  # O3, outside Appendix B but in wide use
    assert len(decoded.readings) == 11
    assert {r.ts_ns for r in decoded.readings} == {_china_ns("20220513162600")}  # period start
    air = hj212.decode(_vector("hj-guocay-2011-air"))
    names = {r.metric for r in hj212.to_decoded(air).readings}
    assert {"a21006-Rtd", "a21007-Rtd", "a21005-Rtd"} <= names  # unknown a21006/7 kept as sent
    cli = render_hj212(_vector("hj-guocay-2011-air"))
    assert cli["codes"]["a21006"] == {"known": False}
    assert cli["codes"]["a21005"]["known"] and cli["codes"]["a21005"]["name"] == "CO"


def test_sample_time_and_non_data_commands():
    decoded = hj212.to_decoded(hj212.decode(_vector("hj-liruoyu-2011")))
    assert [(r.metric, r.value) for r in decoded.readings] == [("w01008-Rtd", 123.456)]
    assert decoded.readings[0].ts_ns == _china_ns("20231008123340")
    for vector_id in ("hj-std-1062", "hj-mv-9014"):
        decoded = hj212.to_decoded(hj212.decode(_vector(vector_id)))
        assert not decoded.readings and not decoded.events


# --- framing and header --------------------------------------------------------------------------

SEGMENT = ("QN=20240101120000000;ST=31;CN=2011;PW=123456;MN=ABC123;Flag=5;"
           "CP=&&DataTime=20240101120000;a21026-Rtd=12.5,a21026-Flag=N&&")


def test_terminator_variants_accepted():
    for tail in ("\r\n", "", "\\r\\n", "\n"):
        packet = hj212.decode(_packet(SEGMENT, tail=tail))
        assert packet.mn == "ABC123" and packet.length_ok


def test_length_fallback_accepts_only_a_closed_cp_with_right_crc():
    packet = hj212.decode(_packet(SEGMENT, length=len(SEGMENT) + 7))
    assert not packet.length_ok and packet.param("a21026-Rtd") == "12.5"
    # accepted, but never passed off as well-formed: ingest counts the repair, the CLI prints it
    assert hj212.to_decoded(packet).repairs == (hj212.REPAIR_LENGTH,) == ("length_mismatch",)
    assert render_hj212(_packet(SEGMENT, length=len(SEGMENT) + 7).decode())["repairs"] == ["length_mismatch"]
    assert hj212.to_decoded(hj212.decode(_packet(SEGMENT))).repairs == ()
    with pytest.raises(CodecError) as err:  # CP not closed: the bytes cannot be trusted
        hj212.decode(_packet(SEGMENT[:-2], length=len(SEGMENT)))
    assert err.value.reason == "length_mismatch"
    with pytest.raises(CodecError) as err:  # a lying length and a wrong CRC
        hj212.decode(_packet(SEGMENT, length=len(SEGMENT) - 3, crc="0000"))
    assert err.value.reason == "length_mismatch"


def test_length_counted_in_characters_is_tolerated():
    # HJ 212-2017 counts "characters"; byte-oriented loggers count UTF-8 bytes (protocols.md U1).
    segment = "ST=31;CN=3020;MN=M;CP=&&Info=站点一&&"
    assert hj212.decode(_packet(segment)).length_ok  # bytes: the reading the codec takes
    packet = hj212.decode(_packet(segment, length=len(segment)))  # characters: fallback
    assert not packet.length_ok and packet.param("Info") == "站点一"
    assert hj212.decode(bytearray(_packet(segment))) == hj212.decode(memoryview(_packet(segment)))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "bad_frame"),
        (b"#0101QN=1", "bad_frame"),
        (b"##01", "truncated"),
        (b"##01a1QN=1;CN=2011&&1234\r\n", "bad_frame"),
        (_packet(SEGMENT)[:40], "truncated"),
        (_packet(SEGMENT, crc="FFFF"), "bad_crc"),
        (_packet("QN=1;ST=31;PW=1;MN=2;CP=&&&&"), "bad_header"),
        (_packet("ST=31;CN=2011;Flag=x;CP=&&&&"), "bad_header"),
        (_packet("ST=31;CN=2011;Flag=256;CP=&&&&"), "bad_header"),
        (_packet("ST=31;CN=2011;PNUM=-1;CP=&&&&"), "bad_header"),
        (b"##0006\xff\xfe&&&&" + b"%04X" % crc_hj212(b"\xff\xfe&&&&") + b"\r\n", "bad_encoding"),
    ],
)
def test_rejections(raw, reason):
    with pytest.raises(CodecError) as err:
        hj212.decode(raw)
    assert err.value.reason == reason


def test_too_large_is_a_per_gateway_limit():
    raw = _packet(SEGMENT)
    assert hj212.decode(raw).cn == "2011"  # over the standard's 1024 is tolerated by default
    with pytest.raises(CodecError) as err:
        hj212.decode(raw, max_length=64)
    assert err.value.reason == "too_large"


def test_header_by_name_in_any_order_and_unknown_fields_kept():
    packet = hj212.decode(_packet("MN=M1;CN=2051;Vendor=7;PW=999999;ST=22;QN=20240101000000123;CP=&&a=1&&"))
    assert (packet.mn, packet.cn, packet.pw, packet.st, packet.qn) == (
        "M1", "2051", "999999", "22", "20240101000000123")
    assert packet.fields["Vendor"] == "7"
    assert packet.flag is None and packet.edition == "2005"


@pytest.mark.parametrize(
    ("flag", "ack", "split", "version", "edition"),
    [(0, False, False, 0, "2005"), (3, True, True, 0, "2005"), (4, False, False, 1, "2017"),
     (5, True, False, 1, "2017"), (7, True, True, 1, "2017"), (8, False, False, 2, "v2"), (255, True, True, 63, "v63")],
)
def test_flag_bits(flag, ack, split, version, edition):
    packet = hj212.decode(_packet(f"ST=31;CN=2011;Flag={flag};CP=&&&&"))
    assert (packet.ack_requested, packet.split, packet.version, packet.edition) == (ack, split, version, edition)


def test_pnum_pno_read_even_without_flag():
    packet = hj212.decode(_packet("PNUM=3;ST=31;CN=2011;PNO=2;CP=&&&&"))
    assert (packet.pnum, packet.pno, packet.flag) == (3, 2, None)


def test_cp_items_split_on_semicolon_comma_and_first_equals():
    packet = hj212.decode(_packet("ST=31;CN=3020;CP=&&BeginTime=20240101000000,EndTime=20240102000000;;Info=a=b;x;&&"))
    assert packet.cp == (("BeginTime", "20240101000000"), ("EndTime", "20240102000000"), ("Info", "a=b"), ("x", ""))
    assert packet.param("Info") == "a=b" and packet.param("missing", "d") == "d"


# --- CRC tolerance -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["modbus", "modbus_le"])
def test_modbus_variants_round_trip_when_enabled(mode):
    raw = hj212.encode(cn="2011", mn="M", cp="DataTime=20240101000000;a21026-Rtd=1", crc_mode=mode)
    with pytest.raises(CodecError) as err:
        hj212.decode(raw)
    assert err.value.reason == "bad_crc"
    assert hj212.decode(raw, crc_modes=hj212.CRC_MODES).crc_mode in (mode, "hj212")
    assert hj212.decode(raw, crc_modes=("hj212", mode)).cn == "2011"


def test_unknown_crc_mode_is_a_configuration_error():
    raw = hj212.encode(cn="2011", mn="M", crc_mode="modbus")
    with pytest.raises(ValueError):
        hj212.decode(raw, crc_modes=("crc32",))


# --- readings ------------------------------------------------------------------------------------

def _decode_cp(cp: str, *, head: str = "QN=20240101120000000;ST=31;CN=2011;Flag=4") -> hj212.Decoded:
    return hj212.to_decoded(hj212.decode(_packet(f"{head};CP=&&{cp}&&")))


def test_every_value_field_and_flag():
    decoded = _decode_cp(
        "DataTime=20240101120000;a21026-Min=1,a21026-Avg=2,a21026-Max=3,a21026-Cou=4,a21026-ZsMin=5,"
        "a21026-ZsAvg=6,a21026-ZsMax=7,a21026-ZsRtd=8,a21026-Rtd=9,a21026-Flag=d,a21026-EFlag=A01,"
        "a21026-SampleTime=20240101115900;a01012-Rtd=120.5;LA-Data=55.1,LA-DayData=50,LA-NightData=45",
        head="ST=31;CN=2051;Flag=4",
    )
    got = {r.metric: (r.value, r.flag) for r in decoded.readings}
    assert got == {
        "a21026-Min": (1.0, "D"), "a21026-Avg": (2.0, "D"), "a21026-Max": (3.0, "D"), "a21026-Cou": (4.0, "D"),
        "a21026-ZsMin": (5.0, "D"), "a21026-ZsAvg": (6.0, "D"), "a21026-ZsMax": (7.0, "D"),
        "a21026-ZsRtd": (8.0, "D"), "a21026-Rtd": (9.0, "D"), "a01012-Rtd": (120.5, "N"),
        "LA-Data": (55.1, "N"), "LA-DayData": (50.0, "N"), "LA-NightData": (45.0, "N"),
    }
    ts = {r.metric: r.ts_ns for r in decoded.readings}
    assert ts["a21026-Avg"] == _china_ns("20240101115900")  # the code's own SampleTime
    assert ts["a01012-Rtd"] == _china_ns("20240101120000")


HEAD_2017 = "QN=20240101120000000;ST=31;CN=2011;Flag=4"
HEAD_2005 = "ST=32;CN=2011;PW=123456;MN=LD130133000015"  # 2005 uploads carry no QN and no Flag


@pytest.mark.parametrize(
    ("head", "flag", "stored"),
    [
        # HJ 212-2017 Table 8 letters, any case; P and B are kept whichever edition the device claims
        (HEAD_2017, "N", "N"), (HEAD_2017, "n", "N"), (HEAD_2017, "T", "T"), (HEAD_2017, "B", "B"),
        (HEAD_2017, "P", "P"), (HEAD_2005, "P", "P"), (HEAD_2005, "p", "P"), (HEAD_2005, "B", "B"),
        # HJ/T 212-2005 air-station digits: 0 calibration, 1 meteorological, 2 abnormal, 3 normal ...
        (HEAD_2005, "0", "C"), (HEAD_2005, "1", "N"), (HEAD_2005, "2", "D"), (HEAD_2005, "3", "N"),
        # ... which 2017 does not define: unknown there, never "normal"
        (HEAD_2017, "0", "D"), (HEAD_2017, "3", "D"), (HEAD_2017.replace("Flag=4", "Flag=8"), "3", "D"),
        # no edition defines H, V, Z or an empty flag
        (HEAD_2017, "H", "D"), (HEAD_2017, "V", "D"), (HEAD_2005, "H", "D"), (HEAD_2017, "Z", "D"),
        (HEAD_2017, "", "D"),
    ],
)
def test_data_flags_normalised_per_edition(head, flag, stored):
    (reading,) = _decode_cp(f"DataTime=20240101120000;w01018-Rtd=1,w01018-Flag={flag}", head=head).readings
    assert reading.flag == stored and reading.flag in DATA_FLAGS
    assert (reading.flag in VALID_FLAGS) == (stored == "N") and (reading.flag in INVALID_FLAGS) == (stored != "N")


def test_2005_power_fault_flag_is_invalid_data():
    # HJ/T 212-2005: P = 电源故障 (power fault). It used to be stored as a flag outside INVALID_FLAGS and so
    # counted as valid data (hourly validity, exceedance rules, valid-data rates).
    packet = hj212.decode(_packet(
        f"{HEAD_2005};CP=&&DataTime=20160824003817000;B01-Rtd=36.91;011-Rtd=231.0,011-Flag=N;"
        "060-Rtd=1.803,060-Flag=P&&"))
    assert packet.edition == "2005"
    got = {r.metric: r.flag for r in hj212.to_decoded(packet).readings}
    assert got == {"w00000-Rtd": "N", "w01018-Rtd": "N", "w21003-Rtd": "P"}
    assert "P" in INVALID_FLAGS and "P" not in VALID_FLAGS
    assert not hj212.flag_is_valid(got["w21003-Rtd"]) and hj212.flag_is_valid(got["w01018-Rtd"])


def test_bare_flag_in_cp_is_the_packet_default():
    decoded = _decode_cp("DataTime=20240101120000;a34001-Rtd=92;a21026-Rtd=1,a21026-Flag=N;Flag=M")
    assert {r.metric: r.flag for r in decoded.readings} == {"a34001-Rtd": "M", "a21026-Rtd": "N"}


def test_several_datatime_sections_and_qn_fallback():
    decoded = _decode_cp("DataTime=20240101120000;a21026-Avg=1;DataTime=20240101130000;a21026-Avg=2")
    assert [(r.ts_ns, r.value) for r in decoded.readings] == [
        (_china_ns("20240101120000"), 1.0), (_china_ns("20240101130000"), 2.0)]
    (reading,) = _decode_cp("a21026-Rtd=1", head="QN=20240101120000250;ST=31;CN=2011").readings
    assert reading.ts_ns == _china_ns("20240101120000") + 250_000_000
    (reading,) = _decode_cp("a21026-Rtd=1", head="QN=1704081600000;ST=31;CN=2011").readings
    assert reading.ts_ns == 1704081600000 * 10**6  # 13-digit epoch-ms QN seen in the field
    with pytest.raises(CodecError) as err:
        _decode_cp("a21026-Rtd=1", head="ST=31;CN=2011")
    assert err.value.reason == "bad_time"
    with pytest.raises(CodecError) as err:
        _decode_cp("DataTime=20241301000000;a21026-Rtd=1")
    assert err.value.reason == "bad_time"


def test_bad_values_are_left_out_and_reported():
    decoded = _decode_cp("DataTime=20240101120000;a21026-Rtd=--,a21026-Flag=D;a21002-Rtd=nan;a21003-Rtd=7;"
                         "a21004-Vendor=abc;x-SN=1234")
    assert [(r.metric, r.value) for r in decoded.readings] == [("a21003-Rtd", 7.0)]
    (event,) = decoded.events
    assert event["kind"] == "hj212_bad_values"
    assert event["items"] == [["a21026-Rtd", "--"], ["a21002-Rtd", "nan"]]


def test_metric_names_are_valid_for_odd_codes():
    decoded = _decode_cp("DataTime=20240101120000;999-Rtd=1;100000-Ia=2;a b-Rtd=3;ele01-Avg=4", head="ST=80;CN=2011")
    assert {r.metric for r in decoded.readings} == {"x999-Rtd", "x100000-Ia", "a_b-Rtd", "ele01-Avg"}


def test_2005_tables_chosen_by_system_code():
    assert hj212_codes.lookup("001", "32", 0).code == "w01001"  # pH in a water system
    assert hj212_codes.lookup("01", "31", 0).code == "a34013"  # smoke dust in a gas system
    assert hj212_codes.lookup("01", "32", 0) is None
    assert hj212_codes.lookup("a21026", "31", 1).name == "SO2"
    assert hj212_codes.lookup("S01", None, None).code == "a19001"
    assert hj212_codes.lookup("zz9", "31", 1) is None


def test_equipment_state_and_run_time_become_events():
    state = hj212.to_decoded(hj212.decode(_packet(
        "QN=20240101120000000;ST=31;CN=2021;Flag=4;CP=&&DataTime=20240101120000;SB1-RS=1;SB2-RS=0&&")))
    assert not state.readings
    assert state.events == [{"kind": "hj212_equipment_state", "cn": "2021", "qn": "20240101120000000",
                             "ts_ns": _china_ns("20240101120000"),
                             "equipment": {"SB1": {"RS": 1.0}, "SB2": {"RS": 0.0}}}]
    runtime = hj212.to_decoded(hj212.decode(_packet(
        "ST=31;CN=2041;Flag=4;CP=&&DataTime=20240101000000;SB1-RT=23.5&&")))
    assert runtime.events[0]["kind"] == "hj212_equipment_runtime"
    assert runtime.events[0]["equipment"] == {"SB1": {"RT": 23.5}}


# --- answers -------------------------------------------------------------------------------------

def test_answers_follow_appendix_c():
    upload = hj212.decode(_packet(SEGMENT))  # Flag=5: 2017, answer wanted
    answer = hj212.decode(hj212.answer(upload))
    assert (answer.cn, answer.st, answer.qn, answer.flag, answer.mn, answer.pw, answer.cp) == (
        "9014", "91", "20240101120000000", 4, "ABC123", "123456", ())
    assert hj212.answer(hj212.decode(_packet(SEGMENT.replace("Flag=5", "Flag=4")))) is None
    assert hj212.answer(hj212.decode(_packet(SEGMENT.replace("CN=2011", "CN=9014")))) is None
    notice = hj212.decode(_packet(SEGMENT.replace("CN=2011", "CN=1013")))
    assert hj212.decode(hj212.answer(notice)).cn == "9013"
    assert hj212.decode(hj212.request_answer(upload, 9)).param("QnRtn") == "9"
    assert hj212.decode(hj212.execution_result(upload, 1)).param("ExeRtn") == "1"
    old = hj212.decode(_packet("ST=32;CN=2011;MN=M;CP=&&&&"))  # 2005: no QN, no Flag
    reply = hj212.decode(hj212.data_answer(old))
    assert reply.flag is None and reply.qn is None and reply.cn == "9014"


def test_answer_uses_the_devices_crc_variant():
    raw = hj212.encode(cn="2011", mn="M", flag=5, qn="20240101000000000", crc_mode="modbus_le")
    upload = hj212.decode(raw, crc_modes=("modbus_le",))
    assert hj212.decode(hj212.data_answer(upload), crc_modes=("modbus_le",)).cn == "9014"


# --- round trips ---------------------------------------------------------------------------------

_codes = st.sampled_from(["a21026", "a21002", "w01018", "a34004", "w00000", "a05024", "LA", "xq1"])
_fields = st.sampled_from(["Rtd", "Avg", "Min", "Max", "Cou", "ZsAvg", "ZsRtd"])
_values = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-10**9, 10**9)
# 2000-01-01 .. 2099-12-31 UTC, whole milliseconds
_times = st.integers(946_684_800_000, 4_102_358_400_000).map(lambda ms: ms * 1_000_000)


@settings(max_examples=150, deadline=None)
@given(
    values=st.dictionaries(_codes, st.dictionaries(_fields, _values, min_size=1), min_size=1, max_size=6),
    flags=st.dictionaries(_codes, st.sampled_from(sorted("NFMSDCTB"))),
    ts=_times,
    cn=st.sampled_from(sorted(hj212.DATA_CNS)),
    mode=st.sampled_from(hj212.CRC_MODES),
)
def test_encode_decode_round_trip(values, flags, ts, cn, mode):
    ts -= ts % 10**9  # DataTime has whole seconds
    payload = {code: {**fields, **({"Flag": flags[code]} if code in flags else {})} for code, fields in values.items()}
    raw = hj212.encode_data(mn="RT1", data_time_ns=ts, values=payload, cn=cn, st="31",
                            qn=hj212.format_china_time(ts, millis=True), crc_mode=mode)
    packet = hj212.decode(raw, crc_modes=(mode,))
    qn = hj212.format_china_time(ts, millis=True)
    assert (packet.cn, packet.mn, packet.crc_mode, packet.qn) == (cn, "RT1", mode, qn)
    got = {(r.metric, r.value, r.flag, r.ts_ns) for r in hj212.to_decoded(packet).readings}
    want = {(f"{code}-{field}", float(value), flags.get(code, "N"), ts)
            for code, fields in values.items() for field, value in fields.items()}
    assert got == want


@given(ts=_times)
def test_china_time_round_trip(ts):
    assert hj212.china_time_ns(hj212.format_china_time(ts, millis=True)) == ts
    assert hj212.qn_time_ns(hj212.format_china_time(ts, millis=True)) == ts


# --- streaming -----------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 400), max_size=6), crlf=st.booleans())
def test_split_packets_reassembles_any_chunking(cuts, crlf):
    a = hj212.encode(cn="2011", mn="A", cp="DataTime=20240101000000;a21026-Rtd=1")
    b = hj212.encode(cn="2051", mn="B", cp="a=1")
    b = b if crlf else b[:-2]
    stream = b"\r\n" + a + b"junk\n" + b + a + b"  " + a[:30]
    got, rest = [], b""
    previous = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        packets, rest = hj212.split_packets(rest + stream[previous:cut])
        got += packets
        previous = max(previous, cut)
    assert [p.strip() for p in got] == [a.strip(), b"junk", b.strip(), a.strip()]
    assert rest == a[:30]
    assert [hj212.decode(p).mn for p in got if p != b"junk"] == ["A", "B", "A"]


def test_split_packets_lying_length_and_limits():
    good = hj212.encode(cn="2011", mn="A")
    liar = _packet(SEGMENT, length=len(SEGMENT) + 40)
    packets, rest = hj212.split_packets(liar + good)
    assert packets == [liar, good] and rest == b""
    assert not hj212.decode(packets[0]).length_ok
    with pytest.raises(CodecError) as err:
        hj212.split_packets(b"##0050" + b"x" * 200, max_length=50)
    assert err.value.reason == "too_large"
    packets, rest = hj212.split_packets(good + b"##0050" + b"x" * 200, max_length=50)
    assert packets == [good] and rest.startswith(b"##0050")  # the packets before it are not lost


# --- fuzzing -------------------------------------------------------------------------------------

_SEEDS = [e["raw"].encode() for e in ENTRIES] + [_packet(SEGMENT)]


_mutants = mutants(_SEEDS, b"#&;,=-0123456789ABCDEF\r\n\x00\xff")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_mutants | st.binary(max_size=300))
def test_mutations_raise_only_codec_errors(raw):
    for modes in (("hj212",), hj212.CRC_MODES):
        try:
            packet = hj212.decode(raw, crc_modes=modes)
        except CodecError:
            continue
        try:
            hj212.to_decoded(packet)
            hj212.answer(packet)
            json.dumps(render_hj212(raw.decode("utf-8", "replace")))
        except CodecError:
            pass
    try:
        hj212.split_packets(raw, max_length=256)
    except CodecError as exc:
        assert exc.reason == "too_large"


# --- CLI -----------------------------------------------------------------------------------------

def test_decode_cli_and_command(capsys):
    out = render_hj212(_vector("hj-hcu-modbus-2051"))  # the CLI tries every CRC variant
    assert out["ok"] and out["crc_mode"] == "modbus" and out["flag"]["version"] == 0
    out = render_hj212(_vector("hj-xy-2011-0139").strip())
    assert out["readings"][0]["time_utc"] == "2016-08-23T16:38:17.000Z"
    assert out["codes"]["011"]["code_2017"] == "w01018" and out["codes"]["011"]["table"] == "2005"
    json.dumps(out)

    # the `wulian decode` command itself (not the whole CLI, whose discovery imports every command)
    from wulian.cli.commands import decode as command

    def main(argv: list[str]) -> int:
        return command.run(argparse.Namespace(kind=argv[1], data=argv[2]))

    assert main(["decode", "hj212", _vector("hj-std-1062")]) == 0
    assert json.loads(capsys.readouterr().out)["fields"]["CN"] == "1062"
    assert main(["decode", "hj212", _vector("hj-bad-xy-crc-4981")]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "ok": False, "reason": "bad_crc", "detail": "packet says 4981, Appendix A gives 4980"}


def test_decode_cli_says_which_values_count_as_valid(capsys):
    raw = _packet(f"{HEAD_2005};CP=&&DataTime=20160824003817000;B01-Rtd=36.91;011-Rtd=231.0,011-Flag=N;"
                  "060-Rtd=1.803,060-Flag=P;101-Rtd=7,101-Flag=z&&").decode()
    from wulian.cli.commands import decode as command

    assert command.run(argparse.Namespace(kind="hj212", data=raw)) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["metric"]: (r["flag"], r["valid"]) for r in out["readings"]} == {
        "w00000-Rtd": ("N", True), "w01018-Rtd": ("N", True), "w21003-Rtd": ("P", False),
        "w21011-Rtd": ("D", False)}
    assert all(type(r["valid"]) is bool for r in out["readings"])
