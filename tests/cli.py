"""Run one ``wulian`` command module as the CLI does (register, parse, call through the CLI's error
handling), without importing the other command modules, so a test depends only on its own area."""
from wulian.cli import Parser, run_parsed
from wulian.settings import get_settings


def run_command(module, argv: list[str]) -> int:
    """Like a new process: the entry point's settings come from the environment as it is now (a test's
    monkeypatched ``WULIAN_...``), never from an earlier command's cached ones."""
    get_settings.cache_clear()
    parser = Parser(prog="wulian")
    module.register(parser.add_subparsers(dest="command", required=True))
    try:
        return run_parsed(parser.parse_args(argv))
    finally:
        get_settings.cache_clear()
