"""Run one ``wulian`` command module as the CLI does (register, parse, call through the CLI's error
handling), without importing the other command modules, so a test depends only on its own area."""
from wulian.cli import Parser, run_parsed


def run_command(module, argv: list[str]) -> int:
    parser = Parser(prog="wulian")
    module.register(parser.add_subparsers(dest="command", required=True))
    return run_parsed(parser.parse_args(argv))
