"""Headless Debian Chromium for tests that render pages (deploy/local/install.sh installs ``chromium``).

Root-safe (``--no-sandbox``), a throwaway profile per run, and no network beyond loopback: every other
host goes to a dead proxy and every other name fails to resolve, so a page that still needs a CDN
renders without it - and the test sees that. A missing browser fails the test, never skips it.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

BROWSERS = ("chromium", "chromium-browser")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, every proxied request fails


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium not found: install Debian's chromium package (bash deploy/local/install.sh)")


def flags(profile_dir: str | Path) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}",
        # loopback bypasses the proxy implicitly; everything else hits the dead proxy or no DNS
        f"--proxy-server={DEAD_PROXY}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]


def _run(url: str, extra: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    host = urlsplit(url).hostname
    assert host in LOOPBACK_HOSTS, f"tests render only loopback pages, not {url}"
    with tempfile.TemporaryDirectory(prefix="wulian-chromium-") as profile:
        r = subprocess.run([chromium(), *flags(profile), *extra, url], capture_output=True, text=True,
                           timeout=timeout_s)
    assert r.returncode == 0, f"chromium exited {r.returncode}: {r.stderr[-2000:]}"
    return r


def dump_dom(url: str, *, budget_ms: int = 20_000, timeout_s: float = 180.0) -> str:
    """The DOM after scripts ran: Chromium's virtual clock advances up to ``budget_ms`` (it waits for
    pending network loads), then the serialised document is returned."""
    return _run(url, [f"--virtual-time-budget={budget_ms}", "--dump-dom"], timeout_s).stdout


def screenshot(url: str, path: str | Path, *, size: tuple[int, int] = (1280, 900), budget_ms: int = 20_000,
               timeout_s: float = 180.0) -> Path:
    """A PNG of the rendered page (for a person to look at, or an image assertion)."""
    path = Path(path)
    _run(url, [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
               f"--screenshot={path}"], timeout_s)
    assert path.exists() and path.stat().st_size > 0, f"no screenshot written to {path}"
    return path
