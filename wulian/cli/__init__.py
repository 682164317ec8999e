"""``wulian`` console script: one subcommand per module in ``wulian.cli.commands``.

Each command module defines ``register(subparsers)`` which adds its parser and sets ``func`` (a
callable taking the parsed args and returning an exit code). Modules are discovered, so adding a
command is adding a file.

Operators get one line on stderr and a non-zero exit for the failures they can fix (database or broker
unreachable, bad arguments or settings, missing files), never a traceback; ``--debug`` or
``WULIAN_DEBUG=1`` lets the exception through with its traceback. :func:`run_parsed` is that one place.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from wulian import log_redaction
from wulian.cli import commands

EXIT_FAILURE = 1  # the environment failed: database, broker, files
EXIT_USAGE = 2  # the operator's input was refused (argparse's own code for bad arguments)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
DEBUG_ENV = "WULIAN_DEBUG"
_MAX_MESSAGE = 500
# Where an exception was raised says what could not be reached (module name prefixes of its frames).
_COMPONENTS = (("asyncpg", "database"), ("paho", "MQTT broker"), ("wulian.ingest.mqtt_client", "MQTT broker"))


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line naming the command and the ``--help`` to read, exit 2 (subparsers inherit
    the class, so every subcommand answers the same way)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wulian", description="Wulian IoT telemetry backend")
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks instead of one-line errors (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    if args is not None and getattr(args, "debug", False):
        return True
    from wulian.settings import debug_requested

    return debug_requested(DEBUG_ENV)


def _component(exc: BaseException) -> str | None:
    """'database' or 'MQTT broker' when a frame of the failing call belongs to its client library."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = frame.f_globals.get("__name__", "")
        for prefix, name in _COMPONENTS:
            if module == prefix or module.startswith(prefix + "."):
                return name
    return None


def _one_line(text: str) -> str:
    text = " ".join(log_redaction.redact(text).split())  # a DSN's password never reaches the terminal
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 3] + "..."


def describe(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for a failure the operator can act on; ``None`` for a bug (keep the traceback)."""
    import asyncpg
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.title == "Settings":
        from wulian.settings import Settings

        prefix = Settings.model_config.get("env_prefix", "")
        parts = [f"{prefix}{'__'.join(str(x) for x in e['loc'])}".upper() + f": {e['msg']}" for e in exc.errors()]
        return "invalid setting " + "; ".join(parts), EXIT_USAGE
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError)):
        # before ValueError: asyncpg's client configuration errors (a bad DSN) are ValueErrors too
        return f"database: {exc}", EXIT_FAILURE
    if isinstance(exc, OSError):  # refused, unreachable, timed out, missing or unreadable files
        detail = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
        where = _component(exc)
        return (f"{where} unreachable: {detail}" if where else detail), EXIT_FAILURE
    if isinstance(exc, ValueError):  # the project's way of refusing an input, naming it
        return str(exc) or type(exc).__name__, EXIT_USAGE
    return None


def run_parsed(args: argparse.Namespace, call=None) -> int:
    """Call the parsed command (or ``call(args)``); known failures become ``wulian <cmd>: error: ...``
    on stderr and their exit code."""
    try:
        return int((call or args.func)(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        known = describe(exc)
        if known is None or debug_enabled(args):
            raise
        message, code = known
        print(f"wulian {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return code


def _configured(args: argparse.Namespace) -> int:
    from wulian.settings import get_settings

    settings = get_settings()  # bad settings are refused here, in one line like any other failure
    log_redaction.configure(settings.log_level, settings.log_format)
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv), _configured)


if __name__ == "__main__":
    sys.exit(main())
