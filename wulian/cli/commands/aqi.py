"""``wulian aqi --edition 2012|2026 [--daily] [--json] NAME=VALUE ...``: check an AQI by hand.

NAME is an indicator of the worked examples (SO2_1H, SO2_24H, NO2_1H, NO2_24H, CO_1H, CO_24H, O3_1H,
O3_8H, PM10_24H, PM25_24H); µg/m³, CO in mg/m³. ``--at`` picks the edition from a timestamp instead.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime

from wulian.core.environment.aqi import compute_aqi
from wulian.core.environment.editions import aqi_edition_for
from wulian.core.timebase import NS_PER_S, as_china
from wulian.core.environment.tables import EDITION_2012, EDITION_2026, INDICATORS, UNITS

_EDITIONS = {"2012": EDITION_2012, "2026": EDITION_2026}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aqi", help="compute IAQI/AQI per HJ 633 (2012 or 2026 edition) from concentrations")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--edition", choices=sorted(_EDITIONS), help="HJ 633 edition")
    which.add_argument("--at", help="ISO time of the data (China time without an offset); "
                       "picks the edition in force then")
    p.add_argument("--daily", action="store_true", help="daily report (default: hourly / real-time)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("values", nargs="+", metavar="NAME=VALUE", help=f"one of {', '.join(INDICATORS)}")
    p.set_defaults(func=run)


def parse_pairs(pairs: list[str], known: tuple[str, ...] | None = None) -> dict[str, str]:
    """NAME=VALUE arguments -> dict; raises ValueError naming the bad argument."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise ValueError(f"expected NAME=VALUE, got {pair!r}")
        if known is not None and name not in known:
            raise ValueError(f"unknown name {name!r}; known: {', '.join(known)}")
        out[name] = value.strip()
    return out


def _edition(args: argparse.Namespace) -> str:
    if args.edition:
        return _EDITIONS[args.edition]
    if args.at:
        t = as_china(datetime.fromisoformat(args.at))
        return aqi_edition_for(int(t.timestamp()) * NS_PER_S)
    raise ValueError("give --edition 2012|2026 or --at TIME")


def run(args: argparse.Namespace) -> int:
    try:
        edition = _edition(args)
        values = parse_pairs(args.values, INDICATORS)
        result = compute_aqi(values, edition, "daily" if args.daily else "hourly")
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    out = result.as_dict()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"{out['edition']} {out['report']} report")
    for key, iaqi in out["iaqi"].items():
        mark = "" if key in out["used"] else "  (not counted)"
        shown = "NA" if iaqi is None else str(iaqi)
        print(f"  {key:<9} {values[key]:>10} {UNITS[key]:<6} IAQI {shown}{mark}")
    if out["aqi"] is None:
        print("AQI NA")
    else:
        pub = "" if out["publishable"] else "  (not publishable: indicators missing and AQI <= 100)"
        print(f"AQI {out['aqi']}{pub}")
        print(f"primary pollutant: {', '.join(out['primary']) or '-'}")
        print(f"level {out['level_zh']} ({out['level']})  category {out['category_zh']}  "
              f"colour {out['color_zh']} {out['hex']}")
    if out["missing"]:
        print(f"missing: {', '.join(out['missing'])}")
    if out["exceeding"]:
        print(f"超标污染物 (2012): {', '.join(out['exceeding'])}")
    for note in out["notes"]:
        print(f"note: {note}")
    return 0
