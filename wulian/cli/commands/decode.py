"""``wulian decode KIND DATA``: print a raw field packet decoded as JSON, or its rejection reason (exit 2).

The rendering lives here, not in the codecs: a codec gives data (its packet dataclasses and
``to_decoded``); each ``render_*`` below turns one into the JSON-serialisable dict this command prints.
A renderer imports its codec when called, so ``wulian decode dlt645`` does not load the compiled HJ 212
and JT/T 808 checksums.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_MS, china_fields
from wulian.ingest.codecs.errors import CodecError, parse_hex


def render_hj212(text: str) -> dict:
    """The packet, its codes marked known/unknown and what ingest stores, each value with ``valid``:
    whether its flag lets it count as valid data. All CRC variants are tried so that the output names
    the one the device uses."""
    from wulian.ingest.codecs import hj212, hj212_codes

    packet = hj212.decode(text, crc_modes=hj212.CRC_MODES)
    decoded = hj212.to_decoded(packet)
    codes = {}
    for name, _ in packet.cp:
        code, dash, _field = name.partition("-")
        if dash and code not in codes:
            hit = hj212_codes.lookup(code, packet.st, packet.version)
            codes[code] = (
                {"known": True, "code_2017": hit.code, "name": hit.name, "unit": hit.unit,
                 "table": "2005" if code != hit.code else hit.table}
                if hit is not None else {"known": False}
            )
    return {
        "ok": True,
        "crc_mode": packet.crc_mode,
        "length_ok": packet.length_ok,
        "repairs": list(packet.repairs),
        "cp_closed": packet.cp_closed,
        "fields": packet.fields,
        "flag": None if packet.flag is None else {
            "raw": packet.flag,
            "ack_requested": packet.ack_requested,
            "split": packet.split,
            "version": packet.version,
            "edition": packet.edition,
        },
        "pnum": packet.pnum,
        "pno": packet.pno,
        "cp": [list(item) for item in packet.cp],
        "codes": codes,
        "readings": [
            {"ts_ns": r.ts_ns, "time_utc": _iso(r.ts_ns), "metric": r.metric, "value": r.value,
             "flag": r.flag, "valid": hj212.flag_is_valid(r.flag)}
            for r in decoded.readings
        ],
        "events": decoded.events,
    }


def _iso(ts_ns: int) -> str:
    """UTC ISO 8601 with milliseconds, by the time base's calendar (any 4-digit year, unlike datetime)."""
    y, mo, d, h, mi, s, sub = china_fields(ts_ns - CHINA_OFFSET_NS)  # China fields of UTC-8 h = UTC fields
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{sub // NS_PER_MS:03d}Z"


def _record(value: object) -> object:
    """A codec's dataclasses, bytes and containers as JSON values (bytes as upper-case hex)."""
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, (list, tuple)):
        return [_record(v) for v in value]
    if isinstance(value, dict):
        return {k: _record(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {name: _record(getattr(value, name)) for name in value.__dataclass_fields__}
    return value


def render_jt808(hex_text: str) -> dict:
    """The frame's header, body and named flags, what ingest stores, and ``repairs``: what had to be
    repaired to read it (empty for a well-formed frame). Spaces, ``0x`` and ``:``/``-`` separators are
    ignored; missing 0x7E flags are added."""
    from wulian.ingest.codecs import jt808

    frame = parse_hex(hex_text)
    if frame[:1] != b"\x7e" and frame[-1:] != b"\x7e":
        frame = b"\x7e" + frame + b"\x7e"
    msg = jt808.decode(frame)
    body = _record(msg.payload)
    if isinstance(msg.payload, jt808.Location):
        located = [(body, msg.payload)]
    elif isinstance(msg.payload, jt808.LocationBatch):
        located = list(zip(body["locations"], msg.payload.locations))
    else:
        located = []
    for loc_body, loc in located:
        loc_body["lat"], loc_body["lon"], loc_body["speed_kmh"] = loc.lat, loc.lon, loc.speed_kmh
        loc_body["time_bcd"] = loc.time_bcd
        loc_body["alarms"] = jt808.alarm_flags(loc.alarm_bits, msg.edition)
        loc_body["status"] = jt808.status_flags(loc.status_bits, msg.edition)
        loc_body["items"] = [{"id": f"0x{i:02X}", "value": v.hex().upper()} for i, v in loc.items]
    decoded = jt808.to_decoded(msg)
    return {
        "ok": True,
        "repairs": list(msg.repairs),
        "msg_id": f"0x{msg.msg_id:04X}",
        "edition": msg.edition,
        "version_flag": msg.version_flag,
        "protocol_version": msg.protocol_version,
        "phone": msg.phone,
        "serial": msg.serial,
        "body_len": msg.body_len,
        "encryption": msg.encryption,
        "package": None if msg.total is None else {"total": msg.total, "seq": msg.seq},
        "body_hex": msg.body.hex().upper(),
        "body": body,
        "positions": [_record(p) for p in decoded.positions],
        "events": decoded.events,
    }


def render_dlt645(hex_text: str) -> dict:
    """The frame's fields and, for a read reply, its value."""
    from wulian.ingest.codecs import dlt645

    msg = dlt645.decode(parse_hex(hex_text))
    out: dict = {
        "ok": True,
        "preamble_FE_count": msg.preamble,
        "address": msg.address,
        "control": f"{msg.control:02X}",
        "function": dlt645.CONTROL_NAMES.get(msg.function, f"{msg.function:02X}"),
        "reply": msg.is_reply,
        "error": msg.is_error,
        "length": len(msg.data),
        "data_minus_33": msg.data.hex(" ").upper(),
        "checksum": f"{msg.checksum:02X}",
    }
    if msg.di is not None:
        out["DI"] = f"{msg.di:08X}"
        q = dlt645.QUANTITIES.get(msg.di)
        if q is not None:
            out["DI_name"] = q.name_zh
    got = dlt645.value_of(msg)
    if got is not None:
        out["metric"] = got[0].metric
        out["value"] = got[1]
    if msg.function == 0x13 and msg.is_reply and len(msg.data) == 6:
        out["reported_address"] = msg.data[::-1].hex().upper()
    if msg.is_error and msg.data:
        out["error_code"] = msg.data[0]
    return out


def render_cjt188(hex_text: str) -> dict:
    """The frame's fields and, for a 901F reply, the volumes."""
    from wulian.ingest.codecs import cjt188

    msg = cjt188.decode(parse_hex(hex_text))
    out: dict = {
        "ok": True,
        "preamble_FE_count": msg.preamble,
        "meter_type": f"{msg.meter_type:02X}",
        "meter_type_name": cjt188.METER_TYPES.get(msg.meter_type, "unknown"),
        "address": msg.address,
        "control": f"{msg.control:02X}",
        "reply": msg.is_reply,
        "abnormal": msg.is_abnormal,
        "length": len(msg.data),
        "DI": f"{msg.di:04X}" if msg.di is not None else None,
        "DI_bytes_as_sent": msg.data[:2].hex(" ").upper() if msg.di is not None else None,
        "SER": f"{msg.ser:02X}" if msg.ser is not None else None,
        "checksum": f"{msg.checksum:02X}",
    }
    if msg.is_abnormal:
        out["status_ST"] = msg.status.hex(" ").upper()
    rep = cjt188.volume_reply(msg)
    if rep is not None:
        out["current_cumulative"] = {"value": rep.current, "unit": cjt188.UNITS.get(rep.current_unit),
                                     "unit_code": f"{rep.current_unit:02X}"}
        out["settlement_day_cumulative"] = {"value": rep.settlement, "unit": cjt188.UNITS.get(rep.settlement_unit),
                                            "unit_code": f"{rep.settlement_unit:02X}"}
        out["real_time"] = rep.meter_time.strftime("%Y-%m-%d %H:%M:%S") if rep.meter_time else None
        out["status_ST"] = rep.status.hex(" ").upper()
    return out


# kind -> renderer: takes the packet text (HJ 212 ASCII, or hex for binary protocols) and returns a
# JSON-serialisable dict, raising CodecError when the codec rejects the packet.
RENDERERS: dict[str, Callable[[str], dict]] = {
    "hj212": render_hj212,
    "jt808": render_jt808,
    "dlt645": render_dlt645,
    "cjt188": render_cjt188,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode a raw HJ 212 / JT/T 808 / DL/T 645 / CJ/T 188 packet")
    p.add_argument("kind", choices=sorted(RENDERERS))
    p.add_argument("data", help="HJ 212: the packet text; binary protocols: hex (spaces allowed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        out = RENDERERS[args.kind](args.data)
    except CodecError as exc:
        print(json.dumps({"ok": False, "reason": exc.reason, "detail": exc.detail}, ensure_ascii=False))
        return 2
    print(json.dumps(out, ensure_ascii=False, indent=2, default=str))
    return 0
