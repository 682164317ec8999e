"""/docs works on an isolated network: Swagger UI's assets come from the package (never a CDN), and a
real headless Chromium with no network beyond loopback renders every operation and the Authorize
button from a real uvicorn server of the app."""
import fnmatch
import re
import tomllib

import httpx
import pytest

from wulian.api.app import create_app
from wulian.api.docs import STATIC_DIR
from tests.browser import dump_dom, screenshot
from tests.conftest import ROOT
from tests.services import serving


@pytest.fixture
def api_url(settings):
    with serving(create_app(settings)) as url:
        yield url


def test_docs_page_references_only_its_own_assets(api_url):
    html = httpx.get(f"{api_url}/docs").text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert len(urls) == 4, urls  # stylesheet, favicon, bundle, the OpenAPI document
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "http://" not in html and "https://" not in html, html
    for u in urls:
        r = httpx.get(api_url + u)
        assert r.status_code == 200 and len(r.content) > 100, (u, r.status_code)
    assert httpx.get(f"{api_url}/static/swagger-ui/swagger-ui-bundle.js").headers["content-type"].startswith(
        ("text/javascript", "application/javascript"))
    r = httpx.get(f"{api_url}/static/swagger-ui/nothing.js")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = httpx.get(f"{api_url}/redoc")  # not offered: it would need its own vendored bundle
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_docs_assets_are_package_data():
    """A wheel carries every file /docs serves (pyproject's package-data globs, relative to api/)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["wulian.api"]
    served = [p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert {"static/swagger-ui/swagger-ui-bundle.js", "static/swagger-ui/swagger-ui.css",
            "static/swagger-ui/LICENSE"} <= set(served)
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in served), (served, globs)


def test_swagger_ui_renders_offline_with_operations_and_authorize(api_url, tmp_path):
    doc = httpx.get(f"{api_url}/openapi.json").json()
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    dom = dump_dom(f"{api_url}/docs")
    rendered = set(re.findall(r'class="opblock opblock-(\w+)[^"]*"[^>]*>.*?data-path="([^"]+)"', dom))
    assert {(m.upper(), p) for m, p in rendered} == operations, (len(rendered), len(operations))
    assert re.search(r'<button class="btn authorize[^"]*"[^>]*><span>Authorize</span>', dom), dom[-3000:]
    png = screenshot(f"{api_url}/docs", tmp_path / "docs.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
