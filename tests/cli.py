"""Run one ``wulian`` command module as the CLI does (register, parse, call), without importing the
other command modules, so a test depends only on its own area."""
import argparse


def run_command(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wulian")
    module.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
