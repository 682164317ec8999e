"""``wulian bench codecs``: HJ 212 and JT/T 808 decoding throughput on one core.

* ``hj212_packets_per_s``: CN 2011 uploads with 10 pollutants (Rtd + Flag each), ``decode`` +
  ``to_decoded`` (target >= 50,000).
* ``jt808_frames_per_s``: 0x0200 frames with 3 additional items (mileage, signal strength,
  satellites), ``decode`` + ``to_decoded`` (target >= 200,000).

``*_decode_only_per_s``: ``decode`` alone (what a gateway does per packet before publishing it raw).

Baselines measured in the same run: the pure-Python reference check routines (the HJ 212 Appendix A
CRC loop; the byte-wise unescape + XOR) alone, which is what the compiled checks replace, and
``orjson.loads`` of the equivalent Wulian JSON payload (the project's own ingest format).
Each figure is the best of ``--repeat`` passes over ``--packets`` distinct packets, counted per
CPU-second of this process (``time.process_time``): the machine is shared, and time spent waiting for a
core is not the codec's. The wall-clock figure of the same passes is reported beside it (``*_wall``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from wulian.cli.benches import with_machine

HJ212_TARGET = 50_000
JT808_TARGET = 200_000
_CODES = ("a21026", "a21002", "a21003", "a21004", "a21005", "a34013", "a19001", "a01011", "a01012", "a00000")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codecs", help="HJ 212 and JT/T 808 decode throughput (one core)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--packets", type=int, default=50_000, help="distinct packets/frames per pass")
    p.add_argument("--repeat", type=int, default=3, help="passes; the best counts")
    p.add_argument("--quick", action="store_true", help="5,000 packets, 2 passes (smoke run)")
    p.set_defaults(func=run)


def _hj212_packets(n: int) -> list[bytes]:
    from wulian.ingest.codecs import hj212

    base = 1_764_000_000 * 10**9
    out = []
    for i in range(n):
        values = {code: {"Rtd": round(10 + (i * 7 + k) % 997 / 10, 2), "Flag": "N"}
                  for k, code in enumerate(_CODES)}
        ts = base + i * 10**9
        out.append(hj212.encode_data(
            mn="010000A8900016F000169DC0", data_time_ns=ts, values=values, cn="2011", st="31",
            qn=hj212.format_china_time(ts, millis=True), flag=5,
        ))
    return out


def _jt808_frames(n: int) -> list[bytes]:
    from wulian.ingest.codecs import jt808

    base = 1_764_000_000 * 10**9
    out = []
    for i in range(n):
        body = jt808.location_body(
            ts_ns=base + i * 10**9, lat=21.27 + i % 1000 / 1e5, lon=110.35 + i % 777 / 1e5,
            speed_kmh=i % 90, heading=i % 360, altitude_m=12,
            items=[(0x01, (100_000 + i).to_bytes(4, "big")), (0x30, bytes((20 + i % 10,))),
                   (0x31, bytes((9,)))],
        )
        out.append(jt808.encode(0x0200, "13800138000", i, body))
    return out


def _json_payloads(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        metrics = {f"{code}-Rtd": round(10 + (i * 7 + k) % 997 / 10, 2) for k, code in enumerate(_CODES)}
        out.append(json.dumps({"ts": 1_764_000_000_000 + i * 1000, "metrics": metrics}).encode())
    return out


def _reference_hj212_crc(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ b
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def _reference_jt808_check(frame: bytes) -> bool:
    out, i, inner = bytearray(), 0, frame[1:-1]
    while i < len(inner):
        b = inner[i]
        if b == 0x7D:
            out.append({0x02: 0x7E, 0x01: 0x7D}[inner[i + 1]])
            i += 2
        else:
            out.append(b)
            i += 1
    check = 0
    for b in out[:-1]:
        check ^= b
    return check == out[-1]


def _rate(fn, items: list, repeat: int) -> tuple[float, float]:
    """(best per CPU-second, best per wall-clock second) of ``fn`` over ``items``."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        for item in items:
            fn(item)
        c1, w1 = time.process_time(), time.perf_counter()
        cpu.append(len(items) / max(c1 - c0, 1e-9))
        wall.append(len(items) / (w1 - w0))
    return max(cpu), max(wall)


def run(args: argparse.Namespace) -> int:
    import orjson

    from wulian.ingest.codecs import hj212, jt808

    n, repeat = (5_000, 2) if args.quick else (args.packets, args.repeat)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say(f"building {n} HJ 212 packets and {n} JT/T 808 frames")
    packets, frames, payloads = _hj212_packets(n), _jt808_frames(n), _json_payloads(n)
    # Warm: compiled checks loaded, caches primed, decoders checked against their own encoders.
    assert len(hj212.to_decoded(hj212.decode(packets[0])).readings) == 10
    assert len(jt808.to_decoded(jt808.decode(frames[0])).positions) == 1

    say("hj212: decode + to_decoded")
    hj_best, hj_wall = _rate(lambda p: hj212.to_decoded(hj212.decode(p)), packets, repeat)
    hj_decode, _ = _rate(hj212.decode, packets, repeat)
    ref_n = max(200, n // 50)  # the reference loops are slow; a sample is enough
    say("hj212: pure-Python Appendix A CRC (reference)")
    hj_ref, _ = _rate(lambda p: _reference_hj212_crc(p[6:-6]), packets[:ref_n], repeat)

    say("jt808: decode + to_decoded")
    jt_best, jt_wall = _rate(lambda f: jt808.to_decoded(jt808.decode(f)), frames, repeat)
    jt_decode, _ = _rate(jt808.decode, frames, repeat)
    say("jt808: pure-Python unescape + XOR (reference)")
    jt_ref, _ = _rate(_reference_jt808_check, frames[:ref_n], repeat)

    say("baseline: orjson.loads of the same values as Wulian JSON")
    json_best, _ = _rate(orjson.loads, payloads, repeat)

    result = {
        "bench": "codecs",
        "packets": n,
        "repeat": repeat,
        "hj212_packets_per_s": round(hj_best),
        "hj212_packets_per_s_wall": round(hj_wall),
        "hj212_decode_only_per_s": round(hj_decode),
        "hj212_packet_bytes": len(packets[0]),
        "hj212_target": HJ212_TARGET,
        "hj212_meets_target": hj_best >= HJ212_TARGET,
        "jt808_frames_per_s": round(jt_best),
        "jt808_frames_per_s_wall": round(jt_wall),
        "jt808_decode_only_per_s": round(jt_decode),
        "jt808_frame_bytes": len(frames[0]),
        "jt808_target": JT808_TARGET,
        "jt808_meets_target": jt_best >= JT808_TARGET,
        "baseline_reference_hj212_crc_only_per_s": round(hj_ref),
        "baseline_reference_jt808_check_only_per_s": round(jt_ref),
        "baseline_orjson_loads_per_s": round(json_best),
        "ratio_hj212_full_vs_reference_crc_only": round(hj_best / hj_ref, 2),
        "ratio_jt808_full_vs_reference_check_only": round(jt_best / jt_ref, 2),
        "ratio_hj212_vs_orjson": round(hj_best / json_best, 3),
        "ratio_jt808_vs_orjson": round(jt_best / json_best, 3),
    }
    result = with_machine(result)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:45} {value}")
    return 0
