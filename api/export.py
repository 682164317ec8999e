"""CSV answers for every list and report: ``?format=csv`` or ``Accept: text/csv``; ``?lang=zh`` for
Chinese column headers (regulators work in spreadsheets).

- Reports stream straight from an asyncpg cursor (:func:`stream_query`): a year of hourly rows never
  sits in memory, whatever the page size.
- Other list routes answer their page: :class:`CsvMiddleware` turns the route's JSON page into CSV
  (nested objects flattened to ``a.b`` columns, lists as JSON text, top-level scalars such as the
  device id repeated on each row); use ``limit`` and ``cursor`` as for JSON.

The text is UTF-8 with a byte-order mark, so Excel opens the Chinese headers correctly; Python reads it
with ``encoding="utf-8-sig"``.
"""
from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from wulian.api.paging import PAGING_DOC

CSV_TYPE = "text/csv; charset=utf-8"
BOM = "\ufeff"
STREAM_PREFETCH = 500  # rows per cursor round trip
_PAGE_FIELDS = ("data", "count", "next_cursor")

# Column headers with ?lang=zh. A dotted column (``current.overall_class``) translates part by part;
# a name not listed keeps its English name.
HEADERS_ZH: dict[str, str] = {
    "device_id": "设备编号", "device": "设备", "station": "站点", "source": "污染源", "plant": "企业",
    "name": "名称", "region": "区域", "district": "区县", "stream": "类别", "enterprise": "企业",
    "river": "河流", "section": "断面/河段", "feeder": "馈线", "concentrator": "集中器", "segment": "路段",
    "day": "日期", "month": "月份", "time": "时间", "period": "统计周期", "pollutant": "污染物",
    "mean": "日均值", "mean_value": "均值", "valid_hours": "有效小时数", "valid": "是否有效",
    "valid_days": "有效天数", "days": "天数", "mass_kg": "排放量(kg)", "mass_hours": "排放量小时数",
    "rule": "规则", "valid_rate": "有效数据率", "min_rate": "最低单项有效率", "items": "监测项目数",
    "overall_class": "水质类别", "worst_class": "最差水质类别", "target_class": "目标类别",
    "target": "目标类别", "compliant": "是否达标", "compliant_days": "达标天数", "compliance_rate": "达标率",
    "stations": "站点数", "registered": "注册车辆数", "networked": "入网车辆数", "online": "上线车辆数",
    "network_rate": "入网率", "online_rate": "上线率", "track_completeness": "轨迹完整率",
    "data_valid_rate": "数据合格率", "drift_rate": "漂移率", "violations": "违规次数",
    "violations_per_vehicle": "车均违规次数", "overspeed_count": "超速次数", "fatigue_hours": "疲劳驾驶时长(h)",
    "night_violations": "夜间违规次数", "meters": "表计数", "samples": "样本数", "voltage_rate": "电压合格率",
    "expected": "应采数", "received": "实采数", "success_rate": "采集成功率", "collection_rate": "采集成功率",
    "severity": "级别", "state": "状态", "title": "标题", "metric": "指标", "count": "数量",
    "alerts": "告警数", "acknowledged": "已确认数", "cleared": "已消除数", "raised_at": "产生时间",
    "acknowledged_at": "确认时间", "acknowledged_by": "确认人", "cleared_at": "消除时间", "closed_at": "关闭时间",
    "tta_p50_s": "确认时长P50(秒)", "tta_p90_s": "确认时长P90(秒)", "ttc_p50_s": "消除时长P50(秒)",
    "ttc_p90_s": "消除时长P90(秒)", "value": "数值", "avg": "平均值", "min": "最小值", "max": "最大值",
    "actor": "操作人", "action": "操作", "object_type": "对象类型", "object_id": "对象编号", "before": "变更前",
    "after": "变更后", "reason": "原因", "topic": "主题", "detail": "详情", "id": "编号",
}


def wants_csv(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None:
        return fmt.lower() == "csv"
    return "text/csv" in request.headers.get("accept", "")


def header(name: str, lang: str | None) -> str:
    if lang != "zh":
        return name
    return HEADERS_ZH.get(name) or ".".join(HEADERS_ZH.get(p, p) for p in name.split("."))


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, (dict, list, tuple)):
        return orjson.dumps(v, default=str).decode()
    return v


def _line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([_cell(v) for v in values])
    return buf.getvalue()


def _flatten(obj: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in obj.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def page_to_csv(body: dict, lang: str | None) -> str:
    """A JSON list page as CSV text (BOM, header line, one line per item)."""
    constant = {k: v for k, v in body.items() if k not in _PAGE_FIELDS and not isinstance(v, (dict, list))}
    rows = [{**constant, **_flatten(item)} if isinstance(item, dict) else {**constant, "value": item}
            for item in body.get("data", [])]
    columns = list(dict.fromkeys([*constant, *(k for r in rows for k in r)]))
    return BOM + _line(header(c, lang) for c in columns) + "".join(_line(r.get(c) for c in columns) for r in rows)


def csv_response(text_or_chunks, filename: str) -> StreamingResponse:
    chunks = [text_or_chunks] if isinstance(text_or_chunks, str) else text_or_chunks
    return StreamingResponse(chunks, media_type=CSV_TYPE,
                             headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'})


def stream_query(pool: asyncpg.Pool, sql: str, args: Sequence, lang: str | None, filename: str) -> StreamingResponse:
    """Stream every row of ``sql`` as CSV through a server-side cursor (header: the statement's columns)."""

    async def chunks() -> AsyncIterator[str]:
        async with pool.acquire() as con:
            async with con.transaction(readonly=True):
                stmt = await con.prepare(sql)
                columns = [a.name for a in stmt.get_attributes()]
                yield BOM + _line(header(c, lang) for c in columns)
                buf: list[str] = []
                async for row in stmt.cursor(*args, prefetch=STREAM_PREFETCH):
                    buf.append(_line(row))
                    if len(buf) >= STREAM_PREFETCH:
                        yield "".join(buf)
                        buf.clear()
                if buf:
                    yield "".join(buf)

    return csv_response(chunks(), filename)


class CsvMiddleware:
    """Pure ASGI: for a CSV request, a 200 JSON list page from any route becomes CSV. Everything else
    (errors, CSV already streamed by a report, non-list bodies) passes through untouched."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        fmt = (query.get("format") or [None])[0]
        accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
        if not (fmt.lower() == "csv" if fmt is not None else "text/csv" in accept):
            return await self.app(scope, receive, send)
        lang = (query.get("lang") or [None])[0]
        start: dict = {}
        body: list[bytes] = []
        passthrough = False

        async def capture(message) -> None:
            nonlocal passthrough
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers") or []).get(b"content-type", b"")
                if message["status"] != 200 or not ctype.startswith(b"application/json"):
                    passthrough = True
                    return await send(message)
                start.update(message)
                return None
            if passthrough:
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return None
            doc = orjson.loads(b"".join(body))
            if not (isinstance(doc, dict) and isinstance(doc.get("data"), list)):
                out = b"".join(body)
                ctype = b"application/json"
            else:
                out = page_to_csv(doc, lang).encode()
                ctype = CSV_TYPE.encode()
            name = scope["path"].strip("/").replace("/", "_")
            headers = [(k, v) for k, v in start.get("headers", []) if k not in (b"content-length", b"content-type")]
            headers += [(b"content-type", ctype), (b"content-length", str(len(out)).encode())]
            if ctype != b"application/json":
                headers.append((b"content-disposition", f'attachment; filename="{name}.csv"'.encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": out})

        await self.app(scope, receive, capture)


def is_list_schema(schema: dict, components: dict) -> bool:
    ref = schema.get("$ref", "")
    target = components.get(ref.rsplit("/", 1)[-1], {}) if ref else schema
    props = target.get("properties", {})
    return "data" in props and "next_cursor" in props


def document(schema: dict) -> dict:
    """Every list operation: the ``format`` and ``lang`` parameters and a ``text/csv`` 200 body."""
    components = schema.get("components", {}).get("schemas", {})
    for item in schema.get("paths", {}).values():
        op = item.get("get")
        if not op:
            continue
        ok = op.get("responses", {}).get("200", {})
        js = ok.get("content", {}).get("application/json", {}).get("schema", {})
        if not is_list_schema(js, components):
            continue
        if PAGING_DOC not in op.get("description", ""):
            op["description"] = (op.get("description", "") + "\n\n" + PAGING_DOC).strip()
        params = op.setdefault("parameters", [])
        names = {p["name"] for p in params}
        if "format" not in names:
            params.append({"name": "format", "in": "query", "required": False,
                           "description": "csv: answer CSV (same as Accept: text/csv); json (default)",
                           "schema": {"type": "string", "enum": ["json", "csv"]}})
        if "lang" not in names:
            params.append({"name": "lang", "in": "query", "required": False,
                           "description": "CSV column headers: en (default) or zh (中文)",
                           "schema": {"type": "string", "enum": ["en", "zh"]}})
        ok["content"]["text/csv"] = {"schema": {"type": "string"}}
    return schema


def install(app: FastAPI) -> None:
    app.add_middleware(CsvMiddleware)
    generate = app.openapi
    done = False

    def openapi() -> dict:
        nonlocal done
        doc = generate()
        if not done:
            document(doc)
            done = True
        return doc

    app.openapi = openapi
