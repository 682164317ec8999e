"""Run every panel query of the generated dashboards against the real database, expanded as Grafana would.

Grafana cannot run here, so this module reproduces what its PostgreSQL datasource does to a panel's
``rawSql`` before sending it to the database, in the same two stages:

1. **Template variables (frontend, ``templateSrv.replace`` with the SQL datasource's
   ``interpolateVariable``).** ``$name``, ``${name}``, ``${name:format}`` and ``[[name]]`` are replaced.
   A multi-value or include-All variable renders each value as an SQL literal (single quotes, embedded
   quotes doubled) joined by ``,`` — so panels write ``IN ($region)``; a single-value variable without
   those options is inserted raw. ``All`` (``$__all``) becomes every option's value, or the variable's
   custom ``allValue`` inserted raw. Formats: ``csv`` (joined raw), ``sqlstring`` (quoted, joined),
   ``singlequote``, ``doublequote``, ``pipe``, ``raw``. Built-ins: ``$__interval``, ``$__interval_ms``,
   ``$__from`` / ``$__to`` (epoch ms), ``$__range``, ``$__range_s``, ``$__range_ms``. Unknown names stay
   as they are (Grafana leaves them, and the database then reports the error).
2. **Macros (backend, ``sqleng.Interpolate`` + the PostgreSQL macro engine).** ``$__interval`` and
   ``$__interval_ms`` again, ``$__unixEpochFrom()`` / ``$__unixEpochTo()`` (epoch s), then every
   ``$__name(args)`` (arguments split on ``,`` and trimmed, no nesting):

   =========================================  ==================================================================
   ``$__time(c)``                             ``c AS "time"``
   ``$__timeEpoch(c)``                        ``extract(epoch from c) as "time"``
   ``$__timeFilter(c)``                       ``c BETWEEN '<from>' AND '<to>'`` (UTC, RFC 3339 with nanoseconds)
   ``$__timeFrom()`` / ``$__timeTo()``        ``'<from>'`` / ``'<to>'``
   ``$__timeGroup(c, iv[, fill])``            ``time_bucket('<iv seconds, 3 decimals>s',c)`` (TimescaleDB on),
                                              else ``floor(extract(epoch from c)/<s>)*<s>``; ``fill`` (NULL,
                                              previous or a number) only fills gaps in the returned frame
   ``$__timeGroupAlias(c, iv[, fill])``       the above + `` AS "time"``; a bare ``$__timeGroup(...)``
                                              directly followed by ``,`` is treated as the alias form, as
                                              Grafana does for pre-5.3 dashboards
   ``$__unixEpochFilter(c)``                  ``c >= <from s> AND c <= <to s>``
   ``$__unixEpochNanoFilter(c)``              the same in nanoseconds; ``$__unixEpochNanoFrom()/To()``
   ``$__unixEpochGroup(c, iv)`` / ``Alias``   ``floor((c)/<s>)*<s>`` [`` AS "time"``]
   =========================================  ==================================================================

   Any other ``$__name(...)`` is an error ("unknown macro"), as in Grafana.

``$__interval`` is ``max(round(range / max_data_points), min_interval)`` with Grafana's rounding table,
where ``min_interval`` is the panel's ``interval`` or else the datasource's ``timeInterval``, and is
written as whole y/d/h/m/s/ms (so 90 s reads ``1m``). Grafana sets ``max_data_points`` to the panel's
width in pixels; verification uses the panel's ``maxDataPoints`` or a fixed default.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

DEFAULT_MAX_DATA_POINTS = 1000
DEFAULT_MIN_INTERVAL = "10s"  # the datasource's timeInterval (deploy/grafana/provisioning)

# ----------------------------------------------------------------------------------------------------
# Time range and interval


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime  # timezone-aware
    end: datetime

    @property
    def ms(self) -> int:
        return int((self.end - self.start).total_seconds() * 1000)


_REL = re.compile(r"^now(?:-(\d+)(s|m|h|d|w))?$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "M": 30 * 86400, "y": 365 * 86400}


def parse_time(text: str, now: datetime) -> datetime:
    """``now``, ``now-6h`` (s/m/h/d/w) or ISO 8601 (no offset: UTC)."""
    m = _REL.match(text.strip())
    if m:
        return now if not m.group(1) else now - timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def parse_interval(text: str) -> float:
    """Grafana's ``gtime.ParseInterval``: ``10s``, ``5m``, ``1h``, ``1d``, ``1w``, ``1M``, ``1y`` or a Go
    duration such as ``1h30m`` / ``500ms``; returns seconds. Quotes around the value are ignored."""
    s = text.strip().strip("'")
    m = re.fullmatch(r"(\d+)(d|w|M|y)", s)
    if m:
        return int(m.group(1)) * _UNIT_S[m.group(2)]
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", s)
    if not parts or "".join(a + u for a, u in parts) != s:
        raise ValueError(f"error parsing interval {text}")
    scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(a) * scale[u] for a, u in parts)


# (upper bound exclusive, rounded value) in ms: Grafana's rangeutil.roundInterval
_ROUND = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
    (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
    (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
    (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
    (24300000, 21600000), (64800000, 43200000), (129600000, 86400000), (604800000, 86400000),
    (1814400000, 604800000), (3628800000, 2592000000),
)


def round_interval(ms: float) -> int:
    for bound, value in _ROUND:
        if ms < bound:
            return value
    return 31536000000


def format_interval(ms: int) -> str:
    """Whole units, largest first (Grafana's ``FormatDuration``): 90 000 ms -> ``1m``."""
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms >= 1 else "1ms"


def panel_interval_ms(rng: TimeRange, max_data_points: int, min_interval: str) -> int:
    low = int(round(parse_interval(min_interval.lstrip(">")) * 1000)) if min_interval else 1
    return max(round_interval(rng.ms / max_data_points), low)


# ----------------------------------------------------------------------------------------------------
# Stage 1: template variables


@dataclass(frozen=True, slots=True)
class VarValue:
    """A resolved variable: the selected values, and the flags that decide how Grafana quotes them."""

    values: tuple[str, ...]
    multi: bool = True
    include_all: bool = True
    all_value: str | None = None  # custom allValue: inserted raw when All is selected
    is_all: bool = False


def _quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _format(var: VarValue, fmt: str | None) -> str:
    if var.is_all and var.all_value is not None and fmt not in ("text",):
        return var.all_value
    vals = var.values
    if fmt is None:  # the SQL datasource's interpolateVariable
        if len(vals) == 1 and not (var.multi or var.include_all):
            return vals[0]
        return ",".join(_quote(v) for v in vals)
    if fmt in ("csv", "raw", "text"):
        return ",".join(vals)
    if fmt == "sqlstring":
        return ",".join(_quote(v) for v in vals)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in vals)
    if fmt == "pipe":
        return "|".join(vals)
    raise ValueError(f"unsupported variable format {fmt!r}")


_VAR = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")


def builtin_vars(rng: TimeRange, interval_ms: int) -> dict[str, str]:
    from_ms, to_ms = int(rng.start.timestamp() * 1000), int(rng.end.timestamp() * 1000)
    return {
        "__interval": format_interval(interval_ms), "__interval_ms": str(interval_ms),
        "__from": str(from_ms), "__to": str(to_ms),
        "__range_ms": str(to_ms - from_ms), "__range_s": str((to_ms - from_ms) // 1000),
        "__range": f"{(to_ms - from_ms) // 1000}s",
    }


def interpolate_variables(sql: str, variables: dict[str, VarValue], builtins: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(5)
        if name in builtins:
            return builtins[name]
        var = variables.get(name)
        return m.group(0) if var is None else _format(var, fmt)

    return _VAR.sub(repl, sql)


# ----------------------------------------------------------------------------------------------------
# Stage 2: macros


def _rfc3339nano(t: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped, ``Z`` suffix."""
    t = t.astimezone(timezone.utc)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _go_float(x: float) -> str:
    """Go's ``%v`` for a float64: integral values without a decimal point."""
    return str(int(x)) if float(x).is_integer() else repr(x)


class MacroError(ValueError):
    pass


_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


def _check_fill(arg: str) -> None:
    if arg.upper() in ("NULL", "PREVIOUS"):
        return
    try:
        float(arg)
    except ValueError:
        raise MacroError(f"error parsing fill value {arg}") from None


def _macro(name: str, args: list[str], rng: TimeRange, timescaledb: bool) -> str:
    start, end = rng.start.astimezone(timezone.utc), rng.end.astimezone(timezone.utc)
    need_col = {"__time", "__timeEpoch", "__timeFilter", "__unixEpochFilter", "__unixEpochNanoFilter"}
    if name in need_col and (not args or not args[0]):
        raise MacroError(f"missing time column argument for macro {name}")
    if name == "__time":
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{_rfc3339nano(start)}' AND '{_rfc3339nano(end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339nano(start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339nano(end)}'"
    if name in ("__timeGroup", "__timeGroupAlias", "__unixEpochGroup", "__unixEpochGroupAlias"):
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        try:
            seconds = parse_interval(args[1])
        except ValueError:
            raise MacroError(f"error parsing interval {args[1]}") from None
        if len(args) == 3:
            _check_fill(args[2])
        alias = ' AS "time"' if name.endswith("Alias") else ""
        if name.startswith("__unixEpoch"):
            return f"floor(({args[0]})/{_go_float(seconds)})*{_go_float(seconds)}{alias}"
        if timescaledb:
            return f"time_bucket('{seconds:.3f}s',{args[0]}){alias}"
        return f"floor(extract(epoch from {args[0]})/{_go_float(seconds)})*{_go_float(seconds)}{alias}"
    if name == "__unixEpochFilter":
        return f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
    ns_from, ns_to = int(start.timestamp()) * 10**9 + start.microsecond * 1000, \
        int(end.timestamp()) * 10**9 + end.microsecond * 1000
    if name == "__unixEpochNanoFilter":
        return f"{args[0]} >= {ns_from} AND {args[0]} <= {ns_to}"
    if name == "__unixEpochNanoFrom":
        return str(ns_from)
    if name == "__unixEpochNanoTo":
        return str(ns_to)
    raise MacroError(f'unknown macro "{name}"')


def expand_macros(sql: str, rng: TimeRange, interval_ms: int, timescaledb: bool = True) -> str:
    sql = sql.replace("$__interval_ms", str(interval_ms)).replace("$__interval", format_interval(interval_ms))
    sql = sql.replace("$__unixEpochFrom()", str(int(rng.start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(rng.end.timestamp())))
    original = sql

    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name == "__timeGroup":
            at = original.find(m.group(0))
            if at >= 0 and original[at + len(m.group(0)):at + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        return _macro(name, [a.strip() for a in m.group(2).split(",")], rng, timescaledb)

    return _MACRO.sub(repl, sql)


def expand(sql: str, rng: TimeRange, variables: dict[str, VarValue], interval_ms: int,
           timescaledb: bool = True) -> str:
    """Both stages, in Grafana's order: the SQL the database receives."""
    return expand_macros(interpolate_variables(sql, variables, builtin_vars(rng, interval_ms)),
                         rng, interval_ms, timescaledb)


# ----------------------------------------------------------------------------------------------------
# Running the dashboards

_NUMERIC = {"int2", "int4", "int8", "float4", "float8", "numeric", "bool"}
_TIME = {"timestamptz", "timestamp", "date"}


@dataclass(slots=True)
class PanelResult:
    dashboard: str
    panel_id: int
    title: str
    type: str
    status: str  # ok | quiet (no rows, and the panel says what that means) | empty | failed
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    ms: float = 0.0
    error: str | None = None
    sql: str | None = None  # the expanded SQL, kept for failed panels


@dataclass(slots=True)
class Report:
    time_from: str
    time_to: str
    role: str | None
    results: list[PanelResult]

    def summary(self) -> dict[str, Any]:
        count = lambda s: sum(r.status == s for r in self.results)  # noqa: E731
        return {
            "from": self.time_from, "to": self.time_to, "role": self.role,
            "dashboards": len({r.dashboard for r in self.results}), "panels": len(self.results),
            "ok": count("ok"), "quiet": count("quiet"), "failed": count("failed"), "empty": count("empty"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "results": [asdict(r) for r in self.results]}


def check_shape(panel_type: str, fmt: str, columns: list[tuple[str, str]], fields: list[str]) -> str | None:
    """What the panel type needs from a query's columns (name, type); ``None`` when satisfied."""
    names = [c for c, _ in columns]
    types = dict(columns)
    missing = [f for f in fields if f not in names]
    if missing:
        return f"missing columns {missing}"
    if fmt == "time_series" or panel_type in ("timeseries", "statetimeline"):
        if "time" not in names or types["time"] not in _TIME:
            return "time series needs a timestamp column named time"
        values = [c for c, t in columns if c not in ("time", "metric") and (t in _NUMERIC or
                                                                             panel_type == "statetimeline")]
        if not values:
            return "time series needs at least one value column"
        if "metric" in names and types["metric"] not in ("text", "varchar", "name"):
            return "the metric column must be text"
    if panel_type == "geomap":
        for c in ("latitude", "longitude"):
            if c not in names or types[c] not in _NUMERIC:
                return f"geomap needs a numeric {c} column"
    if panel_type in ("stat", "bargauge", "barchart") and not any(t in _NUMERIC for _, t in columns):
        return f"{panel_type} needs a numeric column"
    return None


def _panel_fields(panel: dict[str, Any]) -> list[str]:
    """Columns the generated panel declared: table column order, geomap colour/text fields."""
    out: list[str] = []
    for t in panel.get("transformations") or []:
        if t.get("id") == "organize":
            out += list((t.get("options") or {}).get("indexByName", {}))
    if panel.get("type") == "geomap":
        for layer in (panel.get("options") or {}).get("layers", []):
            style = (layer.get("config") or {}).get("style", {})
            for key in ("color", "text"):
                f = (style.get(key) or {}).get("field")
                if f:
                    out.append(f)
    if panel.get("type") == "barchart":
        x = (panel.get("options") or {}).get("xField")
        if x:
            out.append(x)
    return list(dict.fromkeys(out))


async def _fetch(con: asyncpg.Connection, sql: str, role: str | None) -> tuple[list[tuple[str, str]], list]:
    async with con.transaction(readonly=True):
        if role:
            await con.execute(f'SET LOCAL ROLE "{role}"')
        stmt = await con.prepare(sql)
        rows = await stmt.fetch()
        return [(a.name, a.type.name) for a in stmt.get_attributes()], rows


async def resolve_variables(con: asyncpg.Connection, doc: dict[str, Any], rng: TimeRange,
                            chosen: dict[str, list[str]] | None = None,
                            role: str | None = None) -> dict[str, VarValue]:
    """Run each query variable in order (later ones may use earlier ones) and select All, the first
    option, or the values in ``chosen``."""
    resolved: dict[str, VarValue] = {}
    interval_ms = panel_interval_ms(rng, DEFAULT_MAX_DATA_POINTS, DEFAULT_MIN_INTERVAL)
    for var in doc.get("templating", {}).get("list", []):
        name = var["name"]
        multi, include_all = bool(var.get("multi")), bool(var.get("includeAll"))
        if var.get("type") == "query":
            sql = expand(var["query"] if isinstance(var["query"], str) else var["query"].get("rawSql", ""),
                         rng, resolved, interval_ms)
            cols, rows = await _fetch(con, sql, role)
            names = [c for c, _ in cols]
            key = "__value" if "__value" in names else names[0]
            options = tuple(str(r[key]) for r in rows if r[key] is not None)
        else:
            options = tuple(o["value"] for o in var.get("options", []) if o.get("value") != "$__all")
        if chosen and name in chosen:
            values, is_all = tuple(chosen[name]), False
        elif include_all:
            values, is_all = options, True
        else:
            values, is_all = options[:1], False
        resolved[name] = VarValue(values, multi, include_all, var.get("allValue") or None, is_all)
    return resolved


async def verify_dashboard(con: asyncpg.Connection, doc: dict[str, Any], rng: TimeRange, *,
                           chosen: dict[str, list[str]] | None = None, role: str | None = None,
                           max_data_points: int = DEFAULT_MAX_DATA_POINTS,
                           min_interval: str = DEFAULT_MIN_INTERVAL, timescaledb: bool = True) -> list[PanelResult]:
    """Every target of every panel in one dashboard JSON. A panel is ``ok`` when all its targets run,
    return the columns its type needs and at least one returns rows; ``quiet`` when none returns rows but
    the panel declares what that means (``noValue``, e.g. "No open alerts"); ``empty`` otherwise."""
    uid = doc.get("uid", "?")
    try:
        variables = await resolve_variables(con, doc, rng, chosen, role)
    except (asyncpg.PostgresError, MacroError, ValueError) as e:
        return [PanelResult(uid, p.get("id", 0), p.get("title", ""), p.get("type", ""), "failed",
                            error=f"variables: {e}") for p in doc.get("panels", [])]
    results = []
    for p in doc.get("panels", []):
        res = PanelResult(uid, p.get("id", 0), p.get("title", ""), p.get("type", ""), "ok")
        interval_ms = panel_interval_ms(rng, int(p.get("maxDataPoints") or max_data_points),
                                        p.get("interval") or min_interval)
        fields = _panel_fields(p)
        t0 = time.perf_counter()
        for target in p.get("targets", []):
            sql = None
            try:
                sql = expand(target["rawSql"], rng, variables, interval_ms, timescaledb)
                cols, rows = await _fetch(con, sql, role)
            except (asyncpg.PostgresError, MacroError, ValueError) as e:
                res.status, res.error, res.sql = "failed", f"{type(e).__name__}: {e}", sql
                break
            res.columns = [c for c, _ in cols]
            res.rows += len(rows)
            problem = check_shape(p.get("type", ""), target.get("format", "time_series"), cols, fields)
            if problem is None and target.get("format") == "time_series" and rows:
                times = [r["time"] for r in rows]
                if any(a > b for a, b in zip(times, times[1:])):
                    problem = "time series rows are not sorted by time"
            if problem:
                res.status, res.error, res.sql = "failed", problem, sql
                break
        res.ms = round((time.perf_counter() - t0) * 1000, 1)
        if res.status == "ok" and res.rows == 0:
            no_value = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("noValue")
            res.status = "quiet" if no_value else "empty"
        results.append(res)
    return results


EMPTY_MARK = " [empty ${}]"


async def verify(con: asyncpg.Connection, docs: list[dict[str, Any]], rng: TimeRange, *,
                 empty_selection: bool = True, **kw: Any) -> Report:
    """Every panel of every dashboard; with ``empty_selection``, every panel again with each multi-value
    variable selecting nothing (a region without such devices gives a device variable no options), where
    only a failure counts: a query must never break on an empty selection (``IN ()``). Such failures are
    reported with `` [empty $name]`` after the title."""
    results: list[PanelResult] = []
    chosen = kw.pop("chosen", None) or {}
    for doc in docs:
        results += await verify_dashboard(con, doc, rng, chosen=chosen, **kw)
        if not empty_selection:
            continue
        for var in doc.get("templating", {}).get("list", []):
            if not (var.get("multi") or var.get("includeAll")):
                continue
            for r in await verify_dashboard(con, doc, rng, chosen={**chosen, var["name"]: []}, **kw):
                if r.status == "failed":
                    r.title += EMPTY_MARK.format(var["name"])
                    results.append(r)
    return Report(rng.start.isoformat(), rng.end.isoformat(), kw.get("role"), results)
