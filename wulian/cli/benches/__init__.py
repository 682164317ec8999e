"""Benchmarks: one module per ``wulian bench NAME``, each defining ``register(subparsers)``."""
from __future__ import annotations

import json


def emit(result: dict, as_json: bool) -> None:
    """One JSON object (``--json``), or one ``key: value`` line per figure."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, val in result.items():
            print(f"{key:>28}: {val}")
