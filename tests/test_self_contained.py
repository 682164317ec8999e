"""A fresh clone carries everything it needs: no code, script or build file reaches outside the repository
for ``../shared`` (the reference notes the project was written from, which a clone does not have).
``.ci/run`` proves it by running the suite in a copy with nothing beside it; this test names the line."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
CODE_SUFFIXES = {".py", ".sh", ".toml", ".cfg", ".ini", ".yml", ".yaml"}
CODE_NAMES = {"Makefile"}
CODE_DIRS = {".ci"}  # every file in these counts (scripts without a suffix)
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist"}
# the ways a path to the sibling folder gets spelt: "../shared", /work/shared, `parent / "shared"`,
# `"shared" / "data"`, `joinpath("shared")`; plain words ("shared subscription", shared_buffers) do not match
SHARED_REF = re.compile(
    r"""\.\./shared\b|/work/shared\b|/\s*["']shared\b|["']shared["']\s*/|joinpath\(\s*["']shared\b""")


def _tracked() -> list[Path]:
    """The tracked files; in a copy without git metadata (``.ci/run``'s fresh tree), every file there."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / p for p in out.decode("utf-8").split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d, dirs, names in os.walk(ROOT):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith(".stack")
                       and not x.endswith(".egg-info")]
            files += [Path(d) / n for n in names]
        return files


def _is_code(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return path.suffix in CODE_SUFFIXES or path.name in CODE_NAMES or rel.parts[0] in CODE_DIRS


@pytest.mark.parametrize("line, flagged", [
    ('DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traffic"', True),
    ("FRAMES = ROOT.parent / 'shared/reference/standards/meter_frames.json'", True),
    ('SHARED = ROOT.parent / "shared"', True),
    ("cp ../shared/reference/vectors/hj212.json .", True),
    ('open("/work/shared/data/traffic/los_speed.csv")', True),
    ('base.joinpath("shared", "data")', True),
    ("ingest processes on a shared subscription ($share/group/...)", False),
    ("shared_preload_libraries = 'timescaledb'", False),
    ('mode = "shared"', False),
    ("one GIL shared by paho's network thread", False),
])
def test_pattern_tells_paths_from_words(line, flagged):
    assert bool(SHARED_REF.search(line)) is flagged


def test_no_code_reads_the_sibling_shared_folder():
    files = [p for p in _tracked() if p.resolve() != THIS and p.is_file() and _is_code(p)]
    assert any(p.name == "conftest.py" for p in files) and any(p.parts[-2:] == (".ci", "run") for p in files)
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if SHARED_REF.search(line)]
    assert not hits, "code reaching for ../shared (a fresh clone has none):\n" + "\n".join(hits)
