"""``wulian stack up|down|status``: the project-local PostgreSQL+TimescaleDB and Mosquitto (deploy/local/)."""
from __future__ import annotations

import argparse
import os
import subprocess

from wulian.settings import ROOT, Settings, get_settings

STACK_SCRIPT = ROOT / "deploy" / "local" / "stack.sh"


def stack_env(settings: Settings) -> dict[str, str]:
    s = settings.stack
    return {
        **os.environ,
        "STACK_DIR": str(s.dir),
        "PG_PORT": str(s.pg_port),
        "MQTT_PORT": str(s.mqtt_port),
        "PG_MAJOR": str(s.pg_major),
        "STACK_USER": s.os_user,
    }


def run_stack(action: str, settings: Settings | None = None, check: bool = True) -> int:
    settings = settings or get_settings()
    proc = subprocess.run(["bash", str(STACK_SCRIPT), action], env=stack_env(settings), check=False)
    if check and proc.returncode not in (0, 3 if action == "status" else 0):
        raise SystemExit(f"stack {action} failed with exit code {proc.returncode}")
    return proc.returncode


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="install/start/stop the local PostgreSQL+TimescaleDB and Mosquitto")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=lambda args: run_stack(args.action, check=False))
