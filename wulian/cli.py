"""``wulian`` console script: one subcommand per module in ``wulian.commands``.

Each command module defines ``register(subparsers)`` which adds its parser and sets ``func`` (a
callable taking the parsed args and returning an exit code). Modules are discovered, so adding a
command is adding a file.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from wulian import commands, log_redaction


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wulian", description="Wulian IoT telemetry backend")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from wulian.settings import get_settings

    settings = get_settings()
    log_redaction.configure(settings.log_level, settings.log_format)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
