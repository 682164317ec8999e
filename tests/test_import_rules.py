"""The floors, enforced: an AST scan of every module (imports inside functions included) against the
table below, which docs/architecture.md repeats. Tests may import anything."""
from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# importer (longest prefix wins) -> the wulian modules it may import (a prefix allows its submodules).
# Third-party and standard-library imports are free except in core (CORE_* below).
RULES: dict[str, tuple[str, ...]] = {
    "wulian.core": ("wulian.core",),
    "wulian.settings": ("wulian.core",),
    "wulian.log_redaction": (),
    "wulian.local_stack": ("wulian.settings",),
    "wulian.ingest": ("wulian.core", "wulian.ingest", "wulian.settings", "wulian.log_redaction"),
    # the chaos harness drives the simulated field devices and starts the local stack
    "wulian.ingest.chaos": ("wulian.core", "wulian.ingest", "wulian.settings", "wulian.local_stack",
                            "wulian.simulators.field_devices"),
    # the API reads tables directly; what it writes goes through the stores that own those records
    "wulian.api": ("wulian.core", "wulian.api", "wulian.settings", "wulian.ingest.alert_store",
                   "wulian.ingest.audit", "wulian.ingest.device_store", "wulian.ingest.device_secrets",
                   "wulian.ingest.replay", "wulian.ingest.notify_channels", "wulian.ingest.stream_registry"),
    "wulian.simulators": ("wulian.core", "wulian.simulators", "wulian.ingest.topics", "wulian.ingest.mqtt_client",
                          "wulian.ingest.codecs", "wulian.ingest.device_store"),
    "wulian.dashboards": ("wulian.core", "wulian.dashboards", "wulian.settings"),
    "wulian.evaluation": ("wulian.core", "wulian.evaluation", "wulian.simulators"),
    # entry points: the CLI may import every floor; ``python -m wulian`` only the CLI
    "wulian.cli": ("wulian",),
    "wulian.__main__": ("wulian.cli",),
    "wulian": (),  # the package's __init__
}
# core: no I/O framework, no third-party package but the numeric ones
CORE_THIRD_PARTY = frozenset({"numpy", "numba"})
CORE_FORBIDDEN_STDLIB = frozenset({
    "asyncio", "socket", "socketserver", "ssl", "select", "selectors", "subprocess", "multiprocessing",
    "threading", "concurrent", "signal", "http", "urllib", "sqlite3", "os", "shutil", "logging",
})
ENV_READERS = frozenset({"environ", "environb", "getenv", "putenv", "unsetenv"})
SETTINGS_MODULE = "wulian.settings"


def _modules() -> dict[str, Path]:
    """Installed module name -> file, from pyproject's package-dir (the folders keep their layout)."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-dir"]
    out = {}
    for pkg, folder in dirs.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if pkg == "wulian" and parts[0] in {d.split(".")[1] for d in dirs if d != "wulian"}:
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((pkg, *parts))] = path
    return out


def _imports(module: str, path: Path, source: str | None = None) -> list[tuple[int, str]]:
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from wulian.ingest import audit`` imports the module wulian.ingest.audit
            out += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
                    for a in node.names]
    return out


def _rule(module: str) -> tuple[str, tuple[str, ...]]:
    key = max((k for k in RULES if module == k or module.startswith(k + ".")), key=len)
    return key, RULES[key]


def _allowed(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def violations(module: str, path: Path, source: str | None = None) -> list[str]:
    """What ``module`` imports against the table (and, for core, against the I/O ban)."""
    key, allowed = _rule(module)
    bad = []
    for line, target in _imports(module, path, source):
        top = target.split(".")[0]
        where = f"{path.name}:{line} {module} imports {target}"
        if top == "wulian":
            if target != "wulian" and not _allowed(target, allowed):
                bad.append(f"{where} (floor {key} may import {', '.join(allowed) or 'no wulian module'})")
        elif key == "wulian.core" and (top in CORE_FORBIDDEN_STDLIB or
                                       (top not in sys.stdlib_module_names and top not in CORE_THIRD_PARTY)):
            bad.append(f"{where} (core: no I/O, third-party only {', '.join(sorted(CORE_THIRD_PARTY))})")
    return bad


MODULES = _modules()


def test_every_module_is_covered_by_the_table():
    assert len(MODULES) > 150
    assert {_rule(m)[0] for m in MODULES} == set(RULES)  # no dead row either


def test_every_module_keeps_to_its_floor():
    bad = [v for m, p in sorted(MODULES.items()) for v in violations(m, p)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, source, flagged", [
    ("wulian.core.traffic.x", "import asyncio", True),
    ("wulian.core.traffic.x", "def f():\n    import asyncpg", True),
    ("wulian.core.traffic.x", "import orjson", True),
    ("wulian.core.traffic.x", "import numpy as np\nfrom wulian.core.timebase import NS_PER_S", False),
    ("wulian.core.traffic.x", "from wulian.ingest import topics", True),
    ("wulian.core.traffic.x", "from wulian.settings import Settings", True),
    ("wulian.ingest.pipeline", "from wulian.api.app import create_app", True),
    ("wulian.ingest.chaos.stack", "from wulian.cli.commands.stack import run_stack", True),
    ("wulian.ingest.chaos.stack", "from wulian.local_stack import run_stack", False),
    ("wulian.ingest.jobs.x", "from wulian.simulators.city import build_city", True),
    ("wulian.api.routes.x", "from wulian.ingest.device_store import DeviceSpec", False),
    ("wulian.api.routes.x", "from wulian.ingest.pipeline import Ingestor", True),
    ("wulian.api.routes.x", "from wulian import cli", True),
    ("wulian.dashboards.x", "from ..settings import DashboardSettings", False),
    ("wulian.dashboards.x", "from ..cli import main", True),
    ("wulian.cli.commands.x", "from wulian.api.app import create_app", False),
])
def test_the_scan_flags_what_it_should(module, source, flagged):
    path = ROOT / (module.split(".")[1] if module.count(".") > 1 else "wulian") / "x.py"
    assert bool(violations(module, path, source)) == flagged


def _env_reads(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ENV_READERS and \
                isinstance(node.value, ast.Name) and node.value.id == "os":
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            out += [f"{path.relative_to(ROOT)}:{node.lineno} from os import {a.name}"
                    for a in node.names if a.name in ENV_READERS]
    return out


def test_only_the_settings_module_reads_the_environment():
    bad = [r for m, p in sorted(MODULES.items()) if m != SETTINGS_MODULE for r in _env_reads(p)]
    assert not bad, "read settings (wulian.settings), or build a child's env with settings.child_env:\n" + \
        "\n".join(bad)


def test_get_settings_is_called_by_entry_points_only():
    """Runtime modules take the settings (or their section) from the entry point that built them."""
    bad = []
    for m, p in sorted(MODULES.items()):
        if m == SETTINGS_MODULE or m == "wulian.cli" or m.startswith("wulian.cli."):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name == "get_settings":
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "\n".join(bad)
