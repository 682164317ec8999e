"""Reference data the tests check the codecs and rules against (what each file is: README.md here).

The one place that knows where the files sit; a missing file raises, so it fails the test, never skips it."""
from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent


def load_json(relpath: str) -> dict:
    """A JSON file under ``tests/data`` (e.g. ``"vectors/hj212.json"``)."""
    return json.loads((DATA_DIR / relpath).read_text(encoding="utf-8"))
