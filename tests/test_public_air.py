"""/public/air: the public air-quality page. No key; only published AQI (a non-publishable hour is NA);
the HJ 633-2012 Table 2 health advice per level; a map drawn from the stations' lat/lon with nothing
fetched from outside; rendered by a real headless Chromium (no network beyond loopback) from a real
uvicorn server. Set WULIAN_UPDATE_SCREENSHOTS=1 to refresh docs/img/public-air.png."""
import os
import re
import shutil
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest

from wulian.api.app import create_app
from wulian.core.environment.aqi import category_for
from wulian.core.environment.tables import AQI_HEALTH_ADVICE, EDITION_2012
from tests.browser import dump_dom, screenshot
from tests.conftest import ROOT
from tests.services import serving

REGION = "pubair"
HOUR = datetime(2026, 12, 8, 6, tzinfo=timezone.utc)  # 14:00 Beijing time
DAY = datetime(2026, 12, 6, 16, tzinfo=timezone.utc)  # the China day 2026-12-07
# station -> (name, lat, lon, hourly AQI or None for not publishable, primary, daily AQI)
STATIONS = {
    "AQ-PUB-1": ("金平 站", 23.371, 116.708, 42, [], 38),
    "AQ-PUB-2": ("龙湖 站", 23.354, 116.681, 87, ["PM2.5"], 76),
    "AQ-PUB-3": ("濠江 站", 23.292, 116.726, 168, ["O3_1H"], 121),
    "AQ-PUB-4": ("澄海 站", 23.466, 116.756, None, [], None),
}


@pytest.fixture(scope="module")
async def stations(pool):
    async with pool.acquire() as con:
        await con.execute("DELETE FROM devices WHERE region = $1", REGION)
        await con.execute("INSERT INTO devices (device_id, region, stream, name, attrs) VALUES"
                          " ('PUB-WATER-1', $1, 'water', '不是空气站', '{\"lat\": 23.3, \"lon\": 116.7}')", REGION)
        for sid, (name, lat, lon, aqi, primary, daily) in STATIONS.items():
            dev = await con.fetchval(
                "INSERT INTO devices (device_id, region, stream, name, attrs) VALUES ($1, $2, 'air', $3, $4::jsonb)"
                " RETURNING id", sid, REGION, name,
                orjson.dumps({"lat": lat, "lon": lon, "operator": "secret-contractor"}).decode())
            for table, t, value in (("env_aqi_hourly", HOUR - timedelta(hours=1), 300),
                                    ("env_aqi_hourly", HOUR, aqi), ("env_aqi_daily", DAY, daily)):
                cat = category_for(value if value is not None else 80)
                await con.execute(
                    f"INSERT INTO {table} (time, device, edition, aqi, level, category, color, primary_pollutants,"
                    " iaqi, concentrations, missing, publishable) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                    " '{\"PM25_24H\": 1}', '{\"PM25_24H\": 12.5}', $9, $10)",
                    t, dev, EDITION_2012, value if value is not None else 80, cat.level, cat.category_zh, cat.hex,
                    primary, 0 if value is not None else 2, value is not None)
    return STATIONS


@pytest.fixture
def api_url(settings):
    with serving(create_app(settings)) as url:
        yield url


def test_json_needs_no_key_and_carries_only_published_data(stations, api_url):
    r = httpx.get(f"{api_url}/public/air.json", params={"region": REGION})
    assert r.status_code == 200, r.text
    body = r.json()
    got = {s["station"]: s for s in body["stations"]}
    assert set(got) == set(STATIONS)  # the water device is not an air station
    for sid, (name, lat, lon, aqi, primary, daily) in STATIONS.items():
        s = got[sid]
        assert (s["name"], s["lat"], s["lon"]) == (name, lat, lon)
        assert s["hourly"]["time"].startswith("2026-12-08T06:00"), s  # the newest hour, not the 300 before
        assert s["hourly"]["aqi"] == aqi and s["daily"]["aqi"] == daily
        if aqi is None:  # HJ 633-2026 §5.3.1: not publishable -> AQI, level, primary pollutant NA
            assert s["hourly"]["level"] is None and s["hourly"]["advice"] is None and not s["hourly"]["publishable"]
        else:
            cat = category_for(aqi)
            assert (s["hourly"]["level"], s["hourly"]["color"], s["hourly"]["category"]) == (
                cat.level, cat.hex, cat.category_zh)
            assert (s["hourly"]["health_effect"], s["hourly"]["advice"]) == AQI_HEALTH_ADVICE[cat.level]
            assert s["hourly"]["primary_pollutants"] == primary
    text = r.text
    assert "secret-contractor" not in text and "concentrations" not in text and "iaqi" not in text
    assert [lv["level"] for lv in body["levels"]] == [1, 2, 3, 4, 5, 6]
    assert body["levels"][3]["advice"] == AQI_HEALTH_ADVICE[4][1]
    assert httpx.get(f"{api_url}/public/air.json", params={"region": "Bad Region"}).status_code == 422


def test_page_loads_only_its_own_assets(api_url):
    r = httpx.get(f"{api_url}/public/air")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert "http://" not in html and "https://" not in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(urls) == ["../static/public_air/air.css", "../static/public_air/air.js", "air.json"], urls
    for u in ("/static/public_air/air.css", "/static/public_air/air.js"):
        asset = httpx.get(api_url + u)
        assert asset.status_code == 200 and "http://" not in asset.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in asset.text


def test_chromium_renders_stations_aqi_map_and_advice(stations, api_url, tmp_path):
    url = f"{api_url}/public/air?region={REGION}"
    dom = dump_dom(url)
    assert 'data-loaded="true"' in dom, dom[-3000:]
    items = dict(re.findall(r'<li class="station" data-station="([^"]+)">(.*?)</li>', dom))
    assert set(items) == set(STATIONS), dom[-3000:]
    for sid, (name, _, _, aqi, _, daily) in stations.items():
        assert name in items[sid]
        assert f'<span class="aqi">{aqi if aqi is not None else "NA"}</span>' in items[sid], items[sid]
        if daily is not None:
            assert f"日 AQI 2026/12/07：{daily}" in items[sid], items[sid]
    assert "龙湖 站" in items["AQ-PUB-2"] and "首要污染物：PM2.5" in items["AQ-PUB-2"]
    assert "首要污染物：臭氧1小时" in items["AQ-PUB-3"] and AQI_HEALTH_ADVICE[4][1] in items["AQ-PUB-3"]
    # the map: one dot per station with its AQI, in the level's colour, inside the inline SVG
    svg = re.search(r'<svg[^>]*id="map-svg".*?</svg>', dom, re.S).group(0)
    dots = dict(re.findall(r'data-station="([^"]+)"><circle[^>]*fill="([^"]+)"', svg))
    assert dots == {sid: category_for(a).hex if a is not None else "#c9d1d9"
                    for sid, (_, _, _, a, _, _) in STATIONS.items()}, svg[:2000]
    assert ">168<" in svg and ">NA<" in svg
    png = screenshot(url, tmp_path / "public-air.png", size=(412, 1500))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("WULIAN_UPDATE_SCREENSHOTS"):
        shutil.copyfile(png, ROOT / "docs" / "img" / "public-air.png")
