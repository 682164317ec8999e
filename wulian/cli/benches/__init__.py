"""Benchmarks: one module per ``wulian bench NAME``, each defining ``register(subparsers)``.

Every bench's output carries ``machine`` (:func:`with_machine`): the CPU model and count it ran on."""
from __future__ import annotations

import json

from wulian.cli.benches.machine import machine as _machine


def with_machine(result: dict) -> dict:
    """``result`` with the machine it was measured on first (every bench's output has it)."""
    return {"machine": _machine(), **{k: v for k, v in result.items() if k != "machine"}}


def emit(result: dict, as_json: bool) -> None:
    """One JSON object (``--json``), or one ``key: value`` line per figure; both with the machine."""
    result = with_machine(result)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for key, val in result.items():
            print(f"{key:>28}: {val}")
