"""``wulian decode KIND DATA``: print a raw field packet decoded as JSON, or its rejection reason (exit 2)."""
from __future__ import annotations

import argparse
import importlib
import json

from wulian.ingest.codecs.errors import CodecError

# kind -> "module:function"; the function takes the packet text (HJ 212 ASCII, or hex for binary
# protocols) and returns a JSON-serialisable dict, raising CodecError when it rejects the packet.
DECODERS = {
    "hj212": "wulian.ingest.codecs.hj212:decode_cli",
    "jt808": "wulian.ingest.codecs.jt808:decode_cli",
    "dlt645": "wulian.ingest.codecs.dlt645:decode_cli",
    "cjt188": "wulian.ingest.codecs.cjt188:decode_cli",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode a raw HJ 212 / JT/T 808 / DL/T 645 / CJ/T 188 packet")
    p.add_argument("kind", choices=sorted(DECODERS))
    p.add_argument("data", help="HJ 212: the packet text; binary protocols: hex (spaces allowed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module, func = DECODERS[args.kind].split(":")
    decode = getattr(importlib.import_module(module), func)
    try:
        out = decode(args.data)
    except CodecError as exc:
        print(json.dumps({"ok": False, "reason": exc.reason, "detail": exc.detail}, ensure_ascii=False))
        return 2
    print(json.dumps(out, ensure_ascii=False, indent=2, default=str))
    return 0
