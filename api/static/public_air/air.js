// Public air-quality page: reads air.json (same origin) and draws the station list and an inline-SVG map
// projected from the stations' lat/lon. No outside tiles, fonts or scripts. Text goes in via textContent.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TZ = "Asia/Shanghai";
const POLLUTANT = { "O3_1H": "臭氧1小时", "O3_8H": "臭氧8小时", "PM2.5": "PM2.5", "PM10": "PM10",
                    "SO2": "SO₂", "NO2": "NO₂", "CO": "CO" };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// levels 1-3 (green, yellow, orange) carry dark text, the darker colours white text
function tone(level) { return level && level >= 4 ? "dark" : "light"; }

function hourText(iso) {
  return new Intl.DateTimeFormat("zh-CN", { timeZone: TZ, month: "2-digit", day: "2-digit", hour: "2-digit",
                                           minute: "2-digit", hour12: false }).format(new Date(iso));
}

function dayText(iso) {
  return new Intl.DateTimeFormat("zh-CN", { timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit" })
    .format(new Date(iso));
}

function primary(r) {
  if (!r || !r.publishable) return "—";
  return r.primary_pollutants.length ? r.primary_pollutants.map(p => POLLUTANT[p] || p).join("、") : "无";
}

function drawMap(stations) {
  const box = document.getElementById("map");
  const pts = stations.filter(s => s.lat !== null && s.lon !== null);
  const W = 420, H = 320, PAD = 40;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, id: "map-svg" });
  if (!pts.length) {
    root.appendChild(svg("text", { x: W / 2, y: H / 2, class: "name" }, "没有带坐标的站点"));
    box.appendChild(root);
    return;
  }
  // equirectangular projection around the stations' mean latitude, same scale on both axes
  const lat0 = pts.reduce((a, s) => a + s.lat, 0) / pts.length;
  const k = Math.cos(lat0 * Math.PI / 180);
  const xs = pts.map(s => s.lon * k), ys = pts.map(s => -s.lat);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const span = Math.max(x1 - x0, y1 - y0, 0.01);  // at least ~1 km across, so one station sits mid-map
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const sc = Math.min((W - 2 * PAD) / Math.max(x1 - x0, 0.01), (H - 2 * PAD) / Math.max(y1 - y0, 0.01));
  const px = x => W / 2 + (x - cx) * sc, py = y => H / 2 + (y - cy) * sc;
  // a graticule of 1, 2 or 5 x 10^k degrees, about four lines across the stations, so distances read at a glance
  const raw = span / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(v => v >= raw);
  const g = svg("g", { class: "grid" });
  for (let lon = Math.floor((cx - W / 2 / sc) / k / step) * step; lon * k < cx + W / 2 / sc; lon += step)
    g.appendChild(svg("line", { x1: px(lon * k), x2: px(lon * k), y1: 0, y2: H }));
  for (let lat = Math.floor((-cy - H / 2 / sc) / step) * step; -lat > cy - H / 2 / sc; lat += step)
    g.appendChild(svg("line", { x1: 0, x2: W, y1: py(-lat), y2: py(-lat) }));
  root.appendChild(g);
  // 1 degree of latitude is about 111.2 km
  root.appendChild(svg("text", { x: 8, y: H - 8, class: "scale" }, `网格间距约 ${(step * 111.2).toFixed(step * 111.2 < 10 ? 1 : 0)} km`));
  for (const s of pts) {
    const h = s.hourly && s.hourly.publishable ? s.hourly : null;
    const x = px(s.lon * k), y = py(-s.lat);
    const grp = svg("g", { class: "station-dot", "data-station": s.station });
    grp.appendChild(svg("circle", { cx: x, cy: y, r: 19, class: "dot", fill: h ? h.color : "#c9d1d9" }));
    grp.appendChild(svg("text", { x: x, y: y, class: "val", fill: h && h.level >= 4 ? "#fff" : "#1d2733" },
                        h ? String(h.aqi) : "NA"));
    grp.appendChild(svg("text", { x: x, y: y + 34, class: "name" }, s.name || s.station));
    root.appendChild(grp);
  }
  box.appendChild(root);
}

function station(s) {
  const h = s.hourly && s.hourly.publishable ? s.hourly : null;
  const li = el("li", "station");
  li.dataset.station = s.station;
  const badge = el("div", h ? `badge ${tone(h.level)}` : "badge na");
  if (h) badge.setAttribute("data-color", h.color);
  badge.appendChild(el("span", "aqi", h ? String(h.aqi) : "NA"));
  badge.appendChild(el("span", "cat", h ? h.category : "不发布"));
  li.appendChild(badge);
  li.appendChild(el("h3", null, s.name || s.station));
  li.appendChild(el("p", "muted", s.hourly ? `小时值 ${hourText(s.hourly.time)} · ${s.region}` : `暂无小时数据 · ${s.region}`));
  li.appendChild(el("p", null, `首要污染物：${primary(s.hourly)}`));
  const d = s.daily;
  li.appendChild(el("p", "daily", d ? (d.publishable ? `日 AQI ${dayText(d.time)}：${d.aqi}（${d.category}）`
                                                     : `日 AQI ${dayText(d.time)}：NA`) : "日 AQI：暂无"));
  if (h) {
    const a = el("div", "advice");
    a.appendChild(el("p", null, `健康影响：${h.health_effect}`));
    a.appendChild(el("p", null, `建议措施：${h.advice}`));
    li.appendChild(a);
  }
  return li;
}

function legend(levels) {
  const body = document.querySelector("#legend tbody");
  let lo = 0;
  for (const l of levels) {
    const tr = el("tr");
    const sw = el("td", `sw ${tone(l.level)}`, l.aqi_max === null ? `>${lo - 1}` : `${lo}–${l.aqi_max}`);
    sw.setAttribute("bgcolor", l.color);  // a presentation attribute: no inline style under the page's CSP
    tr.appendChild(sw);
    tr.appendChild(el("td", null, l.category));
    tr.appendChild(el("td", null, `${l.health_effect}；${l.advice}`));
    body.appendChild(tr);
    if (l.aqi_max !== null) lo = l.aqi_max + 1;
  }
}

function colourBadges() {
  // CSSOM (not a style attribute) is allowed by the CSP
  for (const b of document.querySelectorAll(".badge[data-color]")) b.style.backgroundColor = b.dataset.color;
}

async function main() {
  const updated = document.getElementById("updated");
  try {
    const r = await fetch("air.json" + window.location.search, { headers: { "Accept": "application/json" } });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const data = await r.json();
    drawMap(data.stations);
    const list = document.getElementById("stations");
    for (const s of data.stations) list.appendChild(station(s));
    legend(data.levels);
    colourBadges();
    const times = data.stations.filter(s => s.hourly).map(s => s.hourly.time).sort();
    updated.textContent = times.length ? `${data.stations.length} 个站点 · 最新 ${hourText(times[times.length - 1])}（北京时间）`
                                       : `${data.stations.length} 个站点 · 暂无数据`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    updated.textContent = `数据加载失败：${e.message}`;
    document.body.dataset.loaded = "error";
  }
}

document.addEventListener("DOMContentLoaded", main);
