"""``wulian water-class [--json] [--lake] ITEM=VALUE ...``: GB 3838-2002 class per item and overall.

ITEM is a key of GB 3838 Table 1 as used in the standards tables (pH, DO, CODMn, COD, BOD5, NH3_N, TP,
TN, Cu, Zn, F, Se, As, Hg, Cd, Cr6, Pb, CN, volatile_phenol, petroleum, LAS, sulfide, fecal_coliform),
in mg/L (pH dimensionless, fecal coliform per litre). ``--lake`` reads TP from the lake/reservoir column.
"""
from __future__ import annotations

import argparse
import json

from wulian.core.environment.tables import WATER_ITEMS
from wulian.core.environment.water import classify_sample
from wulian.cli.commands.aqi import parse_pairs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("water-class", help="GB 3838-2002 surface-water class per item and overall")
    p.add_argument("--lake", action="store_true", help="lake/reservoir (TP lake column)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("values", nargs="+", metavar="ITEM=VALUE", help=f"one of {', '.join(WATER_ITEMS)}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        values = parse_pairs(args.values, tuple(WATER_ITEMS))
        result = classify_sample(values, lake=args.lake)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    out = result.as_dict()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"GB3838-2002 single-factor, {out['water_body']}")
    for key, cls in out["item_class"].items():
        name, unit = WATER_ITEMS[key][0], WATER_ITEMS[key][1]
        mult = out["exceedance_multiple"].get(key)
        extra = f"  超标倍数 {mult}" if mult is not None else ""
        print(f"  {key:<16} {values[key]:>10} {unit:<13} {cls:<4} {name}{extra}")
    print(f"overall: {out['overall']} ({out['quality_zh']})")
    if out["main_pollutants"]:
        print(f"main pollutants: {', '.join(out['main_pollutants'])}")
    return 0
