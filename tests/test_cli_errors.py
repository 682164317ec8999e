"""Operator failures answer one line on stderr and a non-zero exit, never a traceback: every command that
touches the database, run against a port with nothing listening; the broker the same; bad arguments and
bad settings; ``--debug`` / ``WULIAN_DEBUG`` bring the traceback back."""
import importlib
import logging
import os
import pkgutil
import subprocess
import sys

import pytest

from tests.cli import run_command
from tests.conftest import ROOT
from tests.services import free_port
from wulian.cli import commands
from wulian.settings import get_settings

# (module, argv): every subcommand that reads or writes the database
DB_COMMANDS = [
    ("db", ["db", "migrate"]),
    ("db", ["db", "retention"]),
    ("apikey", ["apikey", "create", "--role", "admin"]),
    ("apikey", ["apikey", "revoke", "--key-id", "0123456789ab"]),
    ("device", ["device", "add", "CLIERR1", "--no-broker"]),
    ("stream", ["stream", "list"]),
    ("dashboards", ["dashboards", "verify"]),
    ("fuzz", ["fuzz", "--packets", "1"]),
    ("ingest", ["ingest"]),
    ("derive", ["derive", "--once"]),
    ("gateway", ["gateway", "hj212", "--port", "0"]),
    ("gateway", ["gateway", "jt808", "--port", "0"]),
    ("api", ["api"]),
    ("notify", ["notify", "run"]),
    ("notify", ["notify", "test", "duty-phone"]),
    ("forward", ["forward", "hj212"]),
    ("forward", ["forward", "upstream", "province", "127.0.0.1", "9212"]),
    ("forward", ["forward", "station", "province", "ST1", "PV1", "123456"]),
    ("simulate_env", ["simulate-env", "--hours", "1"]),
    ("simulate_energy", ["simulate-energy", "--meter-days", "1"]),
    ("simulate_field", ["simulate-field", "--provision", "--stations", "1", "--terminals", "1", "--duration", "1"]),
    ("simulate_traffic", ["simulate-traffic", "--data", "{traffic_data}", "--rows", "2"]),
    ("loadtest", ["loadtest", "--step-s", "1", "--max-factor", "1"]),
]
# Commands that never reach the database, or only one they start themselves (so a refused DSN is not theirs).
NOT_DB = {
    "aqi": "pure computation", "water_class": "pure computation", "decode": "pure computation",
    "traffic": "evaluation on CSV files", "bench": "in-memory benchmarks", "simulate": "MQTT only",
    "stack": "starts the database", "demo": "starts the stack first", "chaos": "its own throwaway stack",
    "soak": "its own throwaway stack",
    "cluster": "router and worker refuse to start (one line) before the database without a NATS cluster",
}


def test_every_command_module_is_classified():
    """A new command must join DB_COMMANDS (and so this table) or say why it never touches the database."""
    modules = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    assert modules == {m for m, _ in DB_COMMANDS} | set(NOT_DB), modules ^ ({m for m, _ in DB_COMMANDS} | set(NOT_DB))


@pytest.fixture
def nothing_listening(monkeypatch, tmp_path):
    """Settings whose database and broker are free ports with nothing listening; global state the
    commands touch in-process (settings cache, GC tuning, a logger level) restored afterwards."""
    monkeypatch.setenv("WULIAN_DB__DSN", f"postgresql://wulian:not-a-secret@127.0.0.1:{free_port()}/wulian")
    monkeypatch.setenv("WULIAN_MQTT__PORT", str(free_port()))
    monkeypatch.setenv("WULIAN_API__PORT", str(free_port()))
    monkeypatch.delenv("WULIAN_DEBUG", raising=False)
    monkeypatch.setattr("wulian.ingest.service.tune_gc", lambda: None)  # gateway: gc.freeze() in the test process
    pipeline = logging.getLogger("wulian.ingest.pipeline")
    level = pipeline.level
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    pipeline.setLevel(level)


def _traffic_data(directory):
    """A two-sensor Los-loop-shaped dataset (the real one lives outside the repository)."""
    (directory / "los_speed.csv").write_text("1,2\n" + "60.0,55.0\n" * 4)
    (directory / "los_adj.csv").write_text("0,1\n1,0\n")
    return directory


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"wulian {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize("module,argv", DB_COMMANDS, ids=[" ".join(a[:2]) for _, a in DB_COMMANDS])
def test_database_unreachable_is_one_line(nothing_listening, tmp_path, capsys, module, argv):
    argv = [a.format(traffic_data=_traffic_data(tmp_path)) for a in argv]
    rc = run_command(importlib.import_module(f"wulian.cli.commands.{module}"), argv)
    line = _one_error_line(capsys, argv[0])
    assert rc != 0
    assert "database unreachable" in line and "not-a-secret" not in line, line


@pytest.mark.parametrize("argv", [["simulate", "--duration", "1", "--scale", "0.01"],
                                  ["simulate-env", "--no-register", "--hours", "1"]])
def test_broker_unreachable_is_one_error_line(nothing_listening, capsys, argv):
    module = importlib.import_module(f"wulian.cli.commands.{argv[0].replace('-', '_')}")
    rc = run_command(module, argv)
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if ": error: " in x]
    assert rc != 0 and "Traceback" not in err, err
    assert errors == [err.splitlines()[-1]] and "MQTT broker unreachable" in errors[0], err


def _wulian(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """The real console entry (``python -m wulian``): parser, settings and logging as operators get them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WULIAN_")}
    base.update({"WULIAN_DB__DSN": f"postgresql://wulian@127.0.0.1:{free_port()}/wulian", **env})
    return subprocess.run([sys.executable, "-m", "wulian", *argv], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("argv,env,needle,code", [
    (["db", "migrate"], {}, "database unreachable", 1),
    (["db", "frobnicate"], {}, "invalid choice", 2),
    (["apikey", "create", "--expires-days", "soon"], {}, "invalid float value", 2),
    (["db", "migrate"], {"WULIAN_DB__POOL_MIN": "many"}, "invalid setting WULIAN_DB__POOL_MIN", 2),
    (["db", "migrate"], {"WULIAN_DB__DSN": "mysql://u:hunter2@db/x"}, "invalid DSN", 1),
    (["traffic", "evaluate", "--data", "/nonexistent"], {}, "cannot load", 2),
    (["decode", "hj212", "##garbage"], {}, None, 2),
], ids=["db-down", "bad-choice", "bad-type", "bad-setting", "bad-dsn", "missing-files", "bad-packet"])
def test_console_entry_answers_one_line(argv, env, needle, code):
    r = _wulian(*argv, **env)
    assert r.returncode == code, r
    assert "Traceback" not in r.stderr and "hunter2" not in r.stderr, r.stderr
    if needle is not None:
        assert len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_keeps_the_traceback(how):
    r = _wulian("--debug", "db", "migrate") if how == "flag" else _wulian("db", "migrate", WULIAN_DEBUG="1")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConnectionRefusedError" in r.stderr, r.stderr
