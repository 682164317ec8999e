"""Installed names are ours: the folders core/, ingest/, api/, simulators/, dashboards/ install as
``wulian.core`` ... (pyproject's package-dir), so another project's ``core`` or ``api`` cannot shadow them."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("core", "ingest", "api", "simulators", "dashboards")
PROJECT_DIRS = ("wulian", *FOLDERS, "tests")


def _installed_name(init: Path) -> str:
    parts = init.parent.relative_to(ROOT).parts
    return ".".join(parts if parts[0] == "wulian" else ("wulian", *parts))


def test_every_package_folder_is_listed_under_wulian():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {_installed_name(p) for d in ("wulian", *FOLDERS) for p in (ROOT / d).rglob("__init__.py")}
    assert set(cfg["packages"]) == folders
    assert cfg["package-dir"] == {"wulian": "wulian", **{f"wulian.{f}": f for f in FOLDERS}}


def test_no_module_imports_a_bare_top_level_folder():
    bad = []
    for d in PROJECT_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                        if n and n.split(".")[0] in FOLDERS]
    assert not bad, "import these as wulian.<folder>...:\n" + "\n".join(bad)


def test_wheel_holds_only_the_wulian_package(tmp_path):
    # built from a copy: an in-tree build leaves build/ and *.egg-info in the checkout
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for d in ("wulian", *FOLDERS):
        shutil.copytree(ROOT / d, src / d, ignore=skip)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("wulian-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"wulian"}
    for must in ("wulian/core/sql/0001_init.sql", "wulian/api/static/swagger-ui/swagger-ui-bundle.js",
                 "wulian/simulators/data/los_loop/los_speed.csv.xz", "wulian/ingest/codecs/hj212.py",
                 "wulian/simulators/data/mixes/shantou.toml"):
        assert must in names


def test_the_installed_cli_loads_every_command_outside_the_checkout(tmp_path):
    """Under pytest the checkout is on sys.path, so a bare ``simulators`` or ``core`` still imports there;
    the installed ``wulian`` run from elsewhere must find everything under ``wulian.`` (a packaged-data
    lookup by the folder's name broke every command once)."""
    out = subprocess.run([sys.executable, "-m", "wulian", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for command in ("ingest", "api", "derive", "bench", "traffic", "cluster", "stream", "notify", "device",
                    "loadtest"):
        assert command in out.stdout
