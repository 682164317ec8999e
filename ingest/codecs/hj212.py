"""HJ 212 (HJ/T 212-2005, HJ 212-2017 and later) packets: framing, CRC, header, CP, readings, answers.

A packet is ``##`` + 4-digit length + data segment + 4 hex CRC + CR LF (HJ 212-2017 §6.3.2 Table 2).
The length counts the data segment's UTF-8 bytes. When the declared length does not fit but the
packet still ends ``&&`` + CRC and that CRC is right, the length is the only thing wrong: the packet is
accepted with ``length_ok=False``, named in ``Decoded.repairs`` (REPAIR_LENGTH) so that ingest counts it.
Anything else that does not fit is rejected.

Metric names (``to_decoded``): ``{code}-{field}`` as the standard writes them (``a21026-Rtd``,
``a21026-ZsAvg``, ``w00000-Cou``), where ``code`` is the HJ 212-2017 code: 2005 codes are mapped to
their 2017 successor by ``hj212_codes.lookup`` (``011-Rtd`` from a 2005 water logger becomes
``w01018-Rtd``). Codes no table knows are kept as sent (marked ``known: false`` by ``wulian decode``);
one that does not start with a letter gets an ``x`` prefix (``x999-Rtd``) so it is a valid metric name.
Fields that become readings: Rtd, Min, Avg, Max, Cou, ZsRtd, ZsMin, ZsAvg, ZsMax, the noise fields
Data/DayData/NightData, and any vendor field with a numeric value. Each reading carries its code's
``-Flag``, read with the packet's edition (``normalise_flag``): any case; the letters of either edition
(2005 P, 2017 B) kept; 2005 air-station digits mapped to letters in 2005 packets only; anything else
becomes D so it is never taken as valid data. A bare ``Flag=`` in the CP is the packet's default; none
means N. Only N counts as valid data (``core.const.VALID_FLAGS``).
Times: DataTime (or the code's SampleTime) is China time, UTC+8 with no DST since 1991, converted to
UTC ns. For 2051/2061/2031 it is the start of the period (HJ 212-2017 Table 4), stored as-is.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from math import isfinite

from wulian.core.const import DATA_FLAGS, FLAG_NORMAL, HJ212_2005_AIR_FLAGS, UNKNOWN_FLAG, VALID_FLAGS, Kind, Stream
from wulian.core.kernels.checksums import crc_hj212, crc_modbus
from wulian.core.model import Decoded, Reading
from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_MS, NS_PER_S, china_fields, china_midnight_ns, is_date
from wulian.ingest.codecs import hj212_codes
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError

KIND = Kind.HJ212

# Per-device CRC tolerance (the gateway passes what the device registry says):
#   hj212      HJ 212-2017 Appendix A, what the standard prints (always the default)
#   modbus     plain CRC-16/MODBUS printed high byte first (some embedded loggers)
#   modbus_le  plain CRC-16/MODBUS printed low byte first (seen in a receiver log)
CRC_MODES = ("hj212", "modbus", "modbus_le")
MAX_LENGTH = 9999  # what 4 digits can declare; HJ 212-2017 caps at 1024 but real packets exceed it
REPAIR_LENGTH = "length_mismatch"  # LLLL was wrong; the packet was framed by its closing && and CRC
DATA_CNS = frozenset({"2011", "2051", "2061", "2031"})
STATE_CNS = frozenset({"2021", "2041"})
READING_FIELDS = frozenset(
    {"Rtd", "Min", "Avg", "Max", "Cou", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax", "Data", "DayData", "NightData"}
)
# Fields that describe a value rather than being one; never readings even when numeric.
META_FIELDS = frozenset({"Flag", "EFlag", "SampleTime", "Info", "InfoId", "SN", "RS", "RT"})

_HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")
_DIGITS4 = re.compile(rb"[0-9]{4}")
_HEAD_ITEM = re.compile(r"([^;=]+)=([^;]*)")


@dataclass(slots=True)
class Hj212Packet:
    """One validated packet. ``fields`` holds every header field by name as sent (QN, ST, CN, PW, MN,
    Flag, PNUM, PNO and any unknown ones); ``cp_raw`` the CP text, ``cp`` its items. Slotted, not
    frozen: it is built once per packet on the hot path, like core.model's per-record types; treat
    it as immutable."""

    cn: str
    st: str | None
    qn: str | None
    pw: str | None
    mn: str | None
    flag: int | None
    pnum: int | None
    pno: int | None
    cp_raw: str  # the CP text between "CP=&&" and the closing "&&"
    fields: dict
    crc_mode: str = "hj212"  # which of CRC_MODES matched
    length_ok: bool = True  # False: accepted by the &&+CRC fallback although LLLL lied
    cp_closed: bool = True  # CP ended with its closing "&&"

    @property
    def repairs(self) -> tuple[str, ...]:
        """What had to be repaired to read the packet (the tolerated CRC variants are in ``crc_mode``)."""
        return () if self.length_ok else (REPAIR_LENGTH,)

    @property
    def cp(self) -> tuple[tuple[str, str], ...]:
        """CP items in order as (name, value) text: ``;`` and ``,`` both separate items, the first
        ``=`` splits name from value (HJ 212-2017 §6.3.3); empty items are skipped."""
        return tuple(_cp_items(self.cp_raw))

    @property
    def ack_requested(self) -> bool:
        """Flag bit A: the sender wants an answer (9014 for uploads)."""
        return self.flag is not None and bool(self.flag & 1)

    @property
    def split(self) -> bool:
        """Flag bit D: PNUM/PNO are present (the packet is one part of a longer message)."""
        return self.flag is not None and bool(self.flag & 2)

    @property
    def version(self) -> int | None:
        """Flag bits V5..V0: 0 = HJ/T 212-2005, 1 = HJ 212-2017, higher = later editions. None: no Flag."""
        return None if self.flag is None else self.flag >> 2

    @property
    def edition(self) -> str:
        v = self.version
        if v is None or v == 0:
            return "2005"
        if v == 1:
            return "2017"
        return f"v{v}"  # HJ 212-2025 or a vendor value; parsed as 2017

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first CP value named ``name`` (parameter commands: RtdInterval, SystemTime, QnRtn...)."""
        for key, value in self.cp:
            if key == name:
                return value
        return default


def _cp_items(cp_raw: str) -> list[tuple[str, str]]:
    out = []
    for part in cp_raw.replace(",", ";").split(";"):
        name, _, value = part.partition("=")
        if name:
            out.append((name, value))
    return out


# --- framing -------------------------------------------------------------------------------------

def _as_bytes(packet: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(packet, str):
        try:
            return packet.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CodecError("bad_encoding", str(exc)) from None
    if isinstance(packet, (bytes, bytearray, memoryview)):
        return bytes(packet)
    raise CodecError("bad_frame", f"expected bytes or str, got {type(packet).__name__}")


def _crc_matches(segment: bytes, crc_text: bytes, modes: Iterable[str]) -> str | None:
    want = int(crc_text, 16)
    modbus = -1
    for mode in modes:
        if mode == "hj212":
            if crc_hj212(segment) == want:
                return mode
            continue
        if mode not in ("modbus", "modbus_le"):
            raise ValueError(f"unknown HJ 212 CRC mode {mode!r}; expected one of {CRC_MODES}")
        if modbus < 0:
            modbus = crc_modbus(segment)
        got = modbus if mode == "modbus" else ((modbus & 0xFF) << 8) | (modbus >> 8)
        if got == want:
            return mode
    return None


def _crc_detail(segment: bytes, crc_text: bytes, modes: Iterable[str]) -> str:
    detail = f"packet says {crc_text.decode()}, Appendix A gives {crc_hj212(segment):04X}"
    other = _crc_matches(segment, crc_text, [m for m in CRC_MODES if m not in modes])
    if other:
        detail += f"; it matches the {other} variant, not enabled for this device"
    return detail


def _frame(data: bytes, modes: tuple[str, ...], max_length: int) -> tuple[bytes, str, bool]:
    """(data segment, matched CRC mode, length_ok) of one packet, or CodecError."""
    # Fast path: a well-formed packet with CR LF whose length is right.
    head = data[2:6]
    if data[:2] == b"##" and head.isdigit() and data[-2:] == b"\r\n":
        end = 6 + int(head)
        if len(data) == end + 6 and end - 6 <= max_length and _HEX4.fullmatch(data, end, end + 4):
            segment, crc_text = data[6:end], data[end:end + 4]
            if modes == ("hj212",) and crc_hj212(segment) == int(crc_text, 16):
                return segment, "hj212", True
    data = data.strip()
    if data.endswith(b"\\r\\n"):  # terminator written as literal text by some senders
        data = data[:-4]
    if data[:2] != b"##":
        raise CodecError("bad_frame", "packet does not start with ##")
    if len(data) < 6 or not _DIGITS4.fullmatch(data, 2, 6):
        raise CodecError("bad_frame" if len(data) >= 6 else "truncated", "no 4-digit length after ##")
    declared = int(data[2:6])
    if declared > max_length:
        raise CodecError("too_large", f"declared length {declared} > {max_length}")
    end = 6 + declared
    if len(data) == end + 4 and _HEX4.fullmatch(data, end):
        segment, crc_text = data[6:end], data[end:]
        mode = _crc_matches(segment, crc_text, modes)
        if mode is None:
            raise CodecError("bad_crc", _crc_detail(segment, crc_text, modes))
        return segment, mode, True
    # The declared length does not fit. Fallback (recipe step 1): the packet still ends with the
    # closing "&&" of CP and a CRC that is right for the bytes in between.
    if len(data) >= 10 and _HEX4.fullmatch(data, len(data) - 4):
        segment, crc_text = data[6:-4], data[-4:]
        mode = _crc_matches(segment, crc_text, modes)
        if mode is not None:
            if segment.endswith(b"&&"):
                return segment, mode, False
            raise CodecError(
                "length_mismatch",
                f"declared {declared}, found {len(segment)} bytes and CP not closed by &&",
            )
    if len(data) < end + 4:
        raise CodecError("truncated", f"declared {declared} + CRC, have {len(data) - 6} bytes")
    raise CodecError("length_mismatch", f"declared {declared}, found {len(data) - 10} bytes")


def _parse_segment(segment: bytes) -> tuple[dict, str, bool]:
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        try:  # older loggers send Chinese text in GB 18030
            text = segment.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise CodecError("bad_encoding", str(exc)) from None
    cp_at = text.find("CP=&&")
    if cp_at >= 0:
        head, cp_raw = text[:cp_at], text[cp_at + 5:]
    else:
        cp_at = text.find("CP=")
        head, cp_raw = (text, "") if cp_at < 0 else (text[:cp_at], text[cp_at + 3:])
    closed = cp_raw.endswith("&&")
    if closed:
        cp_raw = cp_raw[:-2]
    # Fields by name in any order (HJ 212-2017 Table 3 order is not kept by all devices).
    return dict(_HEAD_ITEM.findall(head)), cp_raw, closed


def _int_field(value: str | None, name: str, hi: int) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or not value.isascii() or int(value) > hi:
        raise CodecError("bad_header", f"{name}={value!r}")
    return int(value)


def decode(
    packet: bytes | str,
    *,
    crc_modes: tuple[str, ...] = ("hj212",),
    max_length: int = MAX_LENGTH,
) -> Hj212Packet:
    """Validate and parse one packet (``\\r\\n`` optional). ``crc_modes``: the CRC variants accepted
    for this device, see CRC_MODES. Raises CodecError: bad_frame, truncated, too_large,
    length_mismatch, bad_crc, bad_encoding, bad_header."""
    data = packet if type(packet) is bytes else _as_bytes(packet)
    segment, mode, length_ok = _frame(data, crc_modes, max_length)
    fields, cp_raw, closed = _parse_segment(segment)
    get = fields.get
    cn = get("CN")
    if not cn:
        raise CodecError("bad_header", "no CN")
    flag = get("Flag")
    if flag is not None:
        flag = _int_field(flag, "Flag", 255)
    pnum = get("PNUM")
    if pnum is not None:
        pnum = _int_field(pnum, "PNUM", 9999)
    pno = get("PNO")
    if pno is not None:
        pno = _int_field(pno, "PNO", 9999)
    return Hj212Packet(cn, get("ST"), get("QN"), get("PW"), get("MN"), flag, pnum, pno, cp_raw, fields,
                       mode, length_ok, closed)


def split_packets(buffer: bytes, *, max_length: int = MAX_LENGTH) -> tuple[list[bytes], bytes]:
    """Cut a TCP byte stream into packets; return (packets, unconsumed rest).

    A packet is ``##`` + LLLL + LLLL bytes + 4 hex digits, plus CR LF when present (some devices send
    none). Whitespace between packets is dropped. Other bytes (ending at a line end or at the next
    ``##``) come out stripped as their own item, so that ``decode`` rejects them (bad_frame) and the
    gateway can dead-letter them. When the declared length does not land on a CRC, or exceeds
    ``max_length``, the packet runs to its line end and ``decode`` applies its length fallback or
    rejects it. CodecError ``too_large`` only when the rest holds more than ``max_length`` + 12 bytes
    without a complete packet; packets before it are returned first.
    """
    out: list[bytes] = []
    pos, n = 0, len(buffer)
    while True:
        start = buffer.find(b"##", pos)
        if start < 0:
            # Junk ends at a line end or at the next "##"; until then it stays in the rest.
            tail = buffer[pos:]
            nl = tail.rfind(b"\n")
            if nl >= 0 or len(tail) > max_length + 12:
                cut = nl + 1 if nl >= 0 else len(tail)
                junk = tail[:cut].strip()
                if junk:
                    out.append(junk)
                tail = tail[cut:]
            return out, tail
        junk = buffer[pos:start].strip()
        if junk:
            out.append(junk)
        if n - start < 6:
            return out, buffer[start:]
        head = buffer[start + 2:start + 6]
        if head.isdigit() and int(head) <= max_length:
            end = start + 10 + int(head)
            if end > n:
                nl = buffer.find(b"\n", start)
                if nl < 0:
                    return out, buffer[start:]  # wait for the rest
                # a line end before the declared end: the length lies, decode decides
            elif _HEX4.fullmatch(buffer, end - 4, end):
                if buffer[end:end + 2] == b"\r\n":
                    end += 2
                elif end + 1 == n and buffer[end:] == b"\r":
                    return out, buffer[start:]  # wait for the LF
                out.append(buffer[start:end])
                pos = end
                continue
        nl = buffer.find(b"\n", start)
        if nl < 0:
            if n - start > max_length + 12:
                if out:
                    return out, buffer[start:]
                raise CodecError("too_large", f"{n - start} bytes without a complete packet")
            return out, buffer[start:]
        out.append(buffer[start:nl + 1])
        pos = nl + 1


# --- readings ------------------------------------------------------------------------------------

@lru_cache(maxsize=1024)
def _china_day_ns(ymd: str) -> int:
    """UTC ns of 00:00 China time on YYYYMMDD, or -1 when not a date."""
    y, m, d = int(ymd[:4]), int(ymd[4:6]), int(ymd[6:8])
    return china_midnight_ns(y, m, d) if is_date(y, m, d) else -1


def china_time_ns(text: str) -> int | None:
    """UTC ns of an HJ 212 time ``YYYYMMDDhhmmss`` (China time), optionally with 3 millisecond digits
    as some loggers append. None when it is not such a time."""
    if len(text) not in (14, 17) or not text.isdigit() or not text.isascii():
        return None
    day = _china_day_ns(text[:8])
    hh, mm, ss = int(text[8:10]), int(text[10:12]), int(text[12:14])
    if day < 0 or hh > 23 or mm > 59 or ss > 59:
        return None
    ms = int(text[14:17]) if len(text) == 17 else 0
    return day + ((hh * 60 + mm) * 60 + ss) * NS_PER_S + ms * NS_PER_MS


def format_china_time(ts_ns: int, *, millis: bool = False) -> str:
    """HJ 212 time text (YYYYMMDDhhmmss, or the 17-digit QN form with ``millis``) for UTC ns."""
    y, m, d, hh, mm, ss, sub = china_fields(ts_ns)
    text = f"{y:04d}{m:02d}{d:02d}{hh:02d}{mm:02d}{ss:02d}"
    return text + f"{sub // NS_PER_MS:03d}" if millis else text


def qn_time_ns(qn: str | None) -> int | None:
    """UTC ns of a QN: 17-digit China time to the ms, or (seen in the field) 13-digit epoch ms."""
    if not qn:
        return None
    if len(qn) == 13 and qn.isdigit():
        return int(qn) * 1_000_000
    return china_time_ns(qn)


@lru_cache(maxsize=256)
def _metric_cache(st: str | None, version: int | None) -> dict[str, str]:
    """Per (ST, version) memo of item name -> metric name; cleared when it grows past 4096 names
    (a device inventing names must not grow memory without bound)."""
    return _BoundedDict()


class _BoundedDict(dict):
    def __setitem__(self, key, value) -> None:
        if len(self) >= 4096:
            self.clear()
        super().__setitem__(key, value)


def metric_name(code: str, field: str, st: str | None, version: int | None) -> str:
    """``{metric_code}-{field}``, e.g. ``w01018-Rtd`` for ``011-Rtd`` from a 2005 water logger."""
    return f"{metric_code(code, st, version)}-{re.sub(r'[^A-Za-z0-9_.]', '_', field)}"[:64]


@lru_cache(maxsize=4096)
def metric_code(code: str, st: str | None, version: int | None) -> str:
    """The code part of a metric name: the 2017 code if any table knows ``code``, else ``code`` made a
    valid metric name (non-name characters to ``_``, ``x`` prefix when it does not start with a letter)."""
    hit = hj212_codes.lookup(code, st, version)
    if hit is not None:
        return hit.code
    clean = re.sub(r"[^A-Za-z0-9_.]", "_", code.strip())[:48] or "_"
    return clean if clean[0].isascii() and clean[0].isalpha() else "x" + clean


# Flag text -> stored flag, by edition. Letters: those of either edition, any case (the two tables
# differ only in 2005 P and 2017 B, both invalid, so a device that claims the wrong edition loses no
# meaning). Digits: HJ/T 212-2005 air stations only; HJ 212-2017 defines none, so in a 2017 (or later)
# packet a digit is unknown, and "3" there must not pass as "normal".
_FLAG_LETTERS = {**{f: f for f in DATA_FLAGS}, **{f.lower(): f for f in DATA_FLAGS}}
_FLAG_MAP_2005 = {**_FLAG_LETTERS, **HJ212_2005_AIR_FLAGS}
_FLAG_MAP_2017 = _FLAG_LETTERS


def _flag_map(version: int | None) -> dict[str, str]:
    """The flag table of a packet's edition (Flag bits V5..V0: none or 0 is HJ/T 212-2005)."""
    return _FLAG_MAP_2005 if not version else _FLAG_MAP_2017


def normalise_flag(text: str, version: int | None) -> str:
    """A data flag as stored, read with the table of the packet's edition (``version`` as
    ``Hj212Packet.version``: None or 0 for HJ/T 212-2005): letters of either edition in any case,
    2005 air-station digits mapped to letters in 2005 packets, anything else UNKNOWN_FLAG."""
    table = _flag_map(version)
    return table.get(text) or table.get(text.strip().upper(), UNKNOWN_FLAG)


def flag_is_valid(flag: str) -> bool:
    """Whether data with this stored flag counts as valid data (exceedance rules, hourly validity,
    valid-data rates): only N does, in both editions."""
    return flag in VALID_FLAGS


def _number(text: str) -> float | None:
    """A finite float, or None. Parsed as Python floats are: widths are not enforced (devices send
    12 decimals where N3.2 is specified), but inf/nan spelled out are not values."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if isfinite(value) else None


def to_decoded(packet: Hj212Packet) -> Decoded:
    """Readings of a data upload (CN 2011/2051/2061/2031), events for equipment state and run time
    (CN 2021/2041), nothing for other commands. Values that are not numbers are left out and listed
    in one ``hj212_bad_values`` event. Raises CodecError ``bad_time`` when a data upload has no usable
    DataTime (nor QN to fall back on). The packet's ``repairs`` go along."""
    out = Decoded(repairs=packet.repairs)
    if packet.cn in DATA_CNS:
        _readings(packet, out)
    elif packet.cn in STATE_CNS:
        _equipment(packet, out)
    return out


def decode_payload(stream: Stream, payload: bytes, now_ns: int, limits: PayloadLimits) -> Decoded:
    """The codec entry point (``contract.DecodeFn``): times from the packet (DataTime, QN)."""
    return to_decoded(decode(payload))


def _readings(packet: Hj212Packet, out: Decoded) -> None:
    # One pass over the CP items, collected per DataTime section (one per packet in practice): the
    # values, and each code's Flag and SampleTime, which may come before or after its values.
    sections = []
    ts = None
    values: list[tuple[str, str, str]] = []
    flags: dict[str, str] = {}
    samples: dict[str, str] = {}
    default_flag = FLAG_NORMAL
    version = packet.version
    flag_map = _flag_map(version)
    for part in packet.cp_raw.replace(",", ";").split(";"):
        name, _, text = part.partition("=")
        code, dash, field = name.partition("-")
        if not dash:
            if name == "DataTime":
                if values:
                    sections.append((ts, values, flags, samples))
                    values, flags, samples = [], {}, {}
                ts = china_time_ns(text)
                if ts is None:
                    raise CodecError("bad_time", f"DataTime={text!r}")
            elif name == "Flag":  # a bare Flag in the CP (vendor form): the default for the packet
                default_flag = normalise_flag(text, version)
            continue
        if field == "Flag":
            flags[code] = text
        elif field == "SampleTime":
            samples[code] = text
        elif field not in META_FIELDS:
            values.append((name, code, field, text))
    sections.append((ts, values, flags, samples))
    st = packet.st
    metrics = _metric_cache(st, version)
    readings = out.readings
    bad: list[list[str]] = []
    for ts, values, flags, samples in sections:
        if not values:
            continue
        if ts is None:
            ts = qn_time_ns(packet.qn)
            if ts is None:
                raise CodecError("bad_time", "data upload without DataTime or QN")
        for name, code, field, text in values:
            try:
                value = float(text)
            except ValueError:
                value = None
            if value is None or not isfinite(value):
                if field in READING_FIELDS:
                    bad.append([name, text])
                continue
            flag = flags.get(code)
            if flag is None:
                flag = default_flag
            else:
                flag = flag_map.get(flag) or normalise_flag(flag, version)
            when = ts
            if samples and code in samples:
                sample_ts = china_time_ns(samples[code])
                if sample_ts is not None:
                    when = sample_ts
            metric = metrics.get(name)
            if metric is None:
                metric = metrics[name] = metric_name(code, field, st, version)
            readings.append(Reading(when, metric, value, flag))
    if bad:
        out.events.append({"kind": "hj212_bad_values", "cn": packet.cn, "qn": packet.qn, "items": bad})


def _equipment(packet: Hj212Packet, out: Decoded) -> None:
    """CN 2021 (running state SBx-RS) and 2041 (daily run time SBx-RT) as one event per DataTime."""
    kind = "hj212_equipment_state" if packet.cn == "2021" else "hj212_equipment_runtime"
    event: dict | None = None
    fallback = qn_time_ns(packet.qn)
    for name, value in packet.cp:
        code, dash, field = name.partition("-")
        if name == "DataTime":
            ts = china_time_ns(value)
            if ts is None:
                raise CodecError("bad_time", f"DataTime={value!r}")
            event = {"kind": kind, "cn": packet.cn, "qn": packet.qn, "ts_ns": ts, "equipment": {}}
            out.events.append(event)
            continue
        if not dash:
            continue
        if event is None:
            if fallback is None:
                raise CodecError("bad_time", "equipment upload without DataTime or QN")
            event = {"kind": kind, "cn": packet.cn, "qn": packet.qn, "ts_ns": fallback, "equipment": {}}
            out.events.append(event)
        number = _number(value)
        event["equipment"].setdefault(code, {})[field] = value if number is None else number


# --- encoding ------------------------------------------------------------------------------------

def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        text = repr(value)
        return format(Decimal(text), "f") if "e" in text or "E" in text else text
    return str(value)


def format_cp(groups: str | Iterable[Mapping[str, object] | Iterable[tuple[str, object]]]) -> str:
    """CP text (without the ``&&``) from groups of (name, value): ``;`` between groups, ``,`` within."""
    if isinstance(groups, str):
        return groups
    parts = []
    for group in groups:
        items = group.items() if isinstance(group, Mapping) else group
        parts.append(",".join(f"{name}={_fmt(value)}" for name, value in items))
    return ";".join(parts)


def encode(
    *,
    cn: str,
    mn: str,
    st: str = "32",
    pw: str = "123456",
    qn: str | None = None,
    flag: int | None = 4,
    pnum: int | None = None,
    pno: int | None = None,
    cp: str | Iterable = "",
    crc_mode: str = "hj212",
) -> bytes:
    """One complete packet with CR LF. Header order as in HJ 212-2017 Appendix C: QN ST CN PW MN Flag
    PNUM PNO CP; fields that are None are left out (2005 uploads have no QN and no Flag)."""
    head = [("QN", qn), ("ST", st), ("CN", cn), ("PW", pw), ("MN", mn), ("Flag", flag),
            ("PNUM", pnum), ("PNO", pno)]
    text = "".join(f"{name}={value};" for name, value in head if value is not None)
    segment = f"{text}CP=&&{format_cp(cp)}&&".encode("utf-8")
    if len(segment) > MAX_LENGTH:
        raise CodecError("too_large", f"data segment of {len(segment)} bytes")
    if crc_mode == "hj212":
        crc = crc_hj212(segment)
    elif crc_mode in ("modbus", "modbus_le"):
        crc = crc_modbus(segment)
        if crc_mode == "modbus_le":
            crc = ((crc & 0xFF) << 8) | (crc >> 8)
    else:
        raise ValueError(f"unknown HJ 212 CRC mode {crc_mode!r}")
    return b"##%04d%s%04X\r\n" % (len(segment), segment, crc)


def encode_data(
    *,
    mn: str,
    data_time_ns: int,
    values: Mapping[str, Mapping[str, object]],
    cn: str = "2011",
    st: str = "32",
    pw: str = "123456",
    qn: str | None = None,
    flag: int | None = 5,
    crc_mode: str = "hj212",
) -> bytes:
    """A data upload (simulators): ``values`` maps a pollutant code to its fields, e.g.
    ``{"a21026": {"Rtd": 12.5, "Flag": "N"}}``. ``data_time_ns`` is UTC; written as China time."""
    groups: list[Iterable[tuple[str, object]]] = [(("DataTime", format_china_time(data_time_ns)),)]
    for code, fields in values.items():
        groups.append([(f"{code}-{field}", value) for field, value in fields.items()])
    return encode(cn=cn, mn=mn, st=st, pw=pw, qn=qn, flag=flag, cp=groups, crc_mode=crc_mode)


def _answer(packet: Hj212Packet, cn: str, cp: str, crc_mode: str | None) -> bytes:
    # Answers use ST=91 and carry the version bits of the packet they answer, without bit A
    # (HJ 212-2017 Appendix C: "Flag=4" for 2017). A 2005 packet without Flag gets none back.
    flag = None if packet.flag is None else packet.flag & ~0b11
    return encode(cn=cn, mn=packet.mn or "", st="91", pw=packet.pw or "", qn=packet.qn, flag=flag,
                  cp=cp, crc_mode=crc_mode or packet.crc_mode)


def data_answer(packet: Hj212Packet, *, crc_mode: str | None = None) -> bytes:
    """CN 9014 data answer to an upload: same QN, ST=91, ``CP=&&&&``. The CRC variant defaults to the
    one the device used."""
    return _answer(packet, "9014", "", crc_mode)


def notice_answer(packet: Hj212Packet, *, crc_mode: str | None = None) -> bytes:
    """CN 9013 notice answer (to 1013 time-calibration requests and other notices)."""
    return _answer(packet, "9013", "", crc_mode)


def request_answer(packet: Hj212Packet, qn_rtn: int = 1, *, crc_mode: str | None = None) -> bytes:
    """CN 9011 request answer, ``QnRtn`` per HJ 212-2017 Table 7 (1 ready, 2 rejected, 3 PW error,
    4 MN error, 5 ST error, 6 Flag error, 7 QN error, 8 CN error, 9 CRC error, 100 unknown)."""
    return _answer(packet, "9011", f"QnRtn={qn_rtn}", crc_mode)


def execution_result(packet: Hj212Packet, exe_rtn: int = 1, *, crc_mode: str | None = None) -> bytes:
    """CN 9012 execution result, ``ExeRtn`` per HJ 212-2017 Table 6 (1 success, 2 failed, ...)."""
    return _answer(packet, "9012", f"ExeRtn={exe_rtn}", crc_mode)


def answer(packet: Hj212Packet) -> bytes | None:
    """What a platform sends back for a packet a station sent, or None: nothing unless Flag bit A asks;
    9013 for the 1013 notice; nothing for answers (9xxx); 9014 for everything else (uploads)."""
    if not packet.ack_requested or packet.cn.startswith("9"):
        return None
    if packet.cn == "1013":
        return notice_answer(packet)
    return data_answer(packet)
