"""``wulian bench NAME [--json]``: benchmarks that print their figures; one module per benchmark in
``wulian.cli.benches`` defining ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import pkgutil

from wulian.cli import benches


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="NAME")
    for info in sorted(pkgutil.iter_modules(benches.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{benches.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(bsub)
