"""``wulian stack up|down|status``: the project-local PostgreSQL+TimescaleDB and Mosquitto (deploy/local/)."""
from __future__ import annotations

import argparse

from wulian.local_stack import run_stack
from wulian.settings import get_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="install/start/stop the local PostgreSQL+TimescaleDB and Mosquitto")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=lambda args: run_stack(args.action, get_settings(), check=False))
