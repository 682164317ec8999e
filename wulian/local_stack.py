"""The project-local PostgreSQL+TimescaleDB and Mosquitto (deploy/local/stack.sh), for ``wulian stack``,
the demo, the chaos harness and the tests: a runtime module, so none of them imports the CLI package."""
from __future__ import annotations

import subprocess

from wulian.settings import ROOT, Settings, child_env

STACK_SCRIPT = ROOT / "deploy" / "local" / "stack.sh"


def stack_env(settings: Settings) -> dict[str, str]:
    s = settings.stack
    return child_env(STACK_DIR=str(s.dir), PG_PORT=str(s.pg_port), MQTT_PORT=str(s.mqtt_port),
                     PG_MAJOR=str(s.pg_major), STACK_USER=s.os_user)


def run_stack(action: str, settings: Settings, check: bool = True) -> int:
    """``stack.sh up|down|status`` for ``settings.stack``; raises SystemExit on failure if ``check``."""
    proc = subprocess.run(["bash", str(STACK_SCRIPT), action], env=stack_env(settings), check=False)
    if check and proc.returncode not in (0, 3 if action == "status" else 0):
        raise SystemExit(f"stack {action} failed with exit code {proc.returncode}")
    return proc.returncode
