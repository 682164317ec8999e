"""Regulators' reports, daily or monthly (China calendar days and months), from the derived tables the
jobs already compute. Every report is scoped by the key's regions, paged like every list, and answers
CSV streamed from a database cursor (``?format=csv`` or ``Accept: text/csv``; ``?lang=zh`` for Chinese
headers), so a long range never sits in memory.

Monthly figures (documented per report): rates are means of the daily rates over the days with data,
except where a ratio of sums is the definition (grid voltage: samples-weighted; meter collection:
received / expected); counts and masses are sums.
"""
from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.export import stream_query, wants_csv
from wulian.api.paging import ListPage, Page, paging
from wulian.api.time_range import day_range
from wulian.core.const import REGION_PATTERN
from wulian.core.environment.tables import WATER_CLASSES
from wulian.core.timebase import CHINA_TZ_NAME, china_today

router = APIRouter(prefix="/v1/reports", tags=["reports"])
REPORT_MAX_DAYS = 3660  # ten years per request: monthly and yearly reports span years
TZ = CHINA_TZ_NAME
_CLASS_ARRAY = "ARRAY[" + ", ".join(f"'{c}'" for c in WATER_CLASSES) + "]"


class Period(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"


class WaterGroup(StrEnum):
    STATION = "station"
    SECTION = "section"


class ReportPublic(ListPage):
    """One page of a report: ``columns`` in order, ``data`` one object per row."""

    report: str
    period: Period
    first_day: date
    last_day: date
    columns: list[str]
    data: list[dict[str, Any]]


# $1 first day, $2 last day (inclusive), $3 region, $4 the key's regions (NULL: all)
_SCOPE = "($3::text IS NULL OR {r} = $3) AND ($4::text[] IS NULL OR {r} = ANY($4))"
_DAYS_TS = (f"{{t}} >= ($1::date)::timestamp AT TIME ZONE '{TZ}'"
            f" AND {{t}} < ($2::date + 1)::timestamp AT TIME ZONE '{TZ}'")


def _bucket(period: Period, day: str) -> str:
    return day if period is Period.DAILY else f"date_trunc('month', {day})::date"


def _label(period: Period) -> str:
    return "day" if period is Period.DAILY else "month"


def emissions_sql(period: Period) -> str:
    """Per source (outlet) and pollutant: days with a daily value, valid days (>= 20 valid hours, HJ 75),
    the mean of the valid daily means and the emitted mass (sum of daily masses)."""
    return f"""
SELECT {_bucket(period, 's.day')} AS {_label(period)}, s.region, s.source, s.name, s.pollutant,
       count(*)::int AS days, (count(*) FILTER (WHERE s.valid))::int AS valid_days,
       sum(s.valid_hours)::int AS valid_hours, (avg(s.mean) FILTER (WHERE s.valid))::float8 AS mean_value,
       sum(s.mass_kg)::float8 AS mass_kg
FROM (SELECT (x.time AT TIME ZONE '{TZ}')::date AS day, d.region, d.device_id AS source, d.name, x.pollutant,
             x.valid, x.valid_hours, x.mean, x.mass_kg
      FROM env_source_daily x JOIN devices d ON d.id = x.device
      WHERE {_DAYS_TS.format(t='x.time')} AND {_SCOPE.format(r='d.region')}) s
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 5 LIMIT $5 OFFSET $6"""


def validity_sql(period: Period) -> str:
    """Per source: the valid-data rate (valid hours / 24 x items, HJ 75), mean of the daily rates, and the
    lowest single-item rate."""
    return f"""
SELECT {_bucket(period, 's.day')} AS {_label(period)}, s.region, s.source, s.name, count(*)::int AS days,
       avg(s.valid_rate)::float8 AS valid_rate, min(s.min_rate)::float8 AS min_rate
FROM (SELECT (x.time AT TIME ZONE '{TZ}')::date AS day, d.region, d.device_id AS source, d.name, x.valid_rate,
             x.min_rate
      FROM env_completeness_daily x JOIN devices d ON d.id = x.device
      WHERE {_DAYS_TS.format(t='x.time')} AND {_SCOPE.format(r='d.region')}) s
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3 LIMIT $5 OFFSET $6"""


def water_sql(period: Period, group: WaterGroup) -> str:
    """GB 3838 daily classes against the target: days assessed, compliant days, the compliance rate and
    the worst daily class; per station, or per river section (attrs.section, else the river) over its
    stations' days."""
    keys = ("s.river, s.station, s.name, s.target_class" if group is WaterGroup.STATION
            else "s.river, s.section, count(DISTINCT s.station)::int AS stations")
    group_by = "1, 2, 3, 4, 5, 6" if group is WaterGroup.STATION else "1, 2, 3, 4"
    return f"""
SELECT {_bucket(period, 's.day')} AS {_label(period)}, s.region, {keys}, count(*)::int AS days,
       (count(*) FILTER (WHERE s.compliant))::int AS compliant_days,
       (count(*) FILTER (WHERE s.compliant))::float8 / count(*) AS compliance_rate,
       ({_CLASS_ARRAY})[max(s.overall)] AS worst_class
FROM (SELECT (x.time AT TIME ZONE '{TZ}')::date AS day, d.region, d.attrs->>'river' AS river,
             coalesce(d.attrs->>'section', d.attrs->>'river') AS section, d.device_id AS station, d.name,
             coalesce(d.attrs->>'target_class', 'III') AS target_class, x.overall, x.compliant
      FROM env_water_daily x JOIN devices d ON d.id = x.device
      WHERE {_DAYS_TS.format(t='x.time')} AND {_SCOPE.format(r='d.region')}) s
GROUP BY {group_by} ORDER BY 1, 2, 3, 4 LIMIT $5 OFFSET $6"""


def vehicles_sql(period: Period) -> str:
    """两客一危 assessment per enterprise: 上线率, 轨迹完整率, 数据合格率 (means of the daily KPIs), the
    vehicles registered (the most on any day) and the violations that started in the period, per vehicle."""
    vday = f"(v.start_time AT TIME ZONE '{TZ}')::date"
    return f"""
WITH k AS (
    SELECT {_bucket(period, 'day')} AS p, region, grp AS enterprise, count(*)::int AS days,
           max(registered) AS registered, avg(online_rate)::float8 AS online_rate,
           avg(track_completeness)::float8 AS track_completeness, avg(valid_rate)::float8 AS data_valid_rate
    FROM vehicle_kpis WHERE scope = 'enterprise' AND day BETWEEN $1 AND $2 AND {_SCOPE.format(r='region')}
    GROUP BY 1, 2, 3),
v AS (
    SELECT {_bucket(period, vday)} AS p, d.region, d.attrs->>'enterprise' AS enterprise, count(*)::int AS violations
    FROM vehicle_violations v JOIN devices d ON d.id = v.device
    WHERE {_DAYS_TS.format(t='v.start_time')} AND {_SCOPE.format(r='d.region')}
    GROUP BY 1, 2, 3)
SELECT k.p AS {_label(period)}, k.region, k.enterprise, k.days, k.registered, k.online_rate, k.track_completeness,
       k.data_valid_rate, coalesce(v.violations, 0) AS violations,
       coalesce(v.violations, 0)::float8 / nullif(k.registered, 0) AS violations_per_vehicle
FROM k LEFT JOIN v ON v.p = k.p AND v.region = k.region AND v.enterprise = k.enterprise
ORDER BY 1, 2, 3 LIMIT $5 OFFSET $6"""


def grid_sql(period: Period) -> str:
    """Voltage qualification rate (GB/T 12325) per feeder: the meters' daily rates weighted by their
    samples, i.e. qualified samples / all samples."""
    return f"""
SELECT {_bucket(period, 'q.day')} AS {_label(period)}, d.region, coalesce(d.attrs->>'feeder', '') AS feeder,
       count(DISTINCT q.device)::int AS meters, count(DISTINCT q.day)::int AS days, sum(q.samples)::bigint AS samples,
       (sum(q.voltage_rate * q.samples) / nullif(sum(q.samples) FILTER (WHERE q.voltage_rate IS NOT NULL), 0))::float8
         AS voltage_rate
FROM grid_quality_daily q JOIN devices d ON d.id = q.device
WHERE q.day BETWEEN $1 AND $2 AND {_SCOPE.format(r='d.region')}
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT $5 OFFSET $6"""


def meters_sql(period: Period) -> str:
    """采集成功率 per district (region): readings received / expected over its concentrators."""
    return f"""
SELECT {_bucket(period, 'day')} AS {_label(period)}, region AS district,
       count(DISTINCT concentrator)::int AS concentrators, count(DISTINCT day)::int AS days,
       sum(expected)::bigint AS expected, sum(received)::bigint AS received,
       (sum(received)::float8 / nullif(sum(expected), 0)) AS collection_rate
FROM meter_collection_daily
WHERE day BETWEEN $1 AND $2 AND {_SCOPE.format(r='region')}
GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $5 OFFSET $6"""


def _days(period: Period, first: date | None, last: date | None) -> tuple[date, date]:
    if period is not Period.DAILY and first is None:  # monthly/yearly: from the same month a year back
        last = last or china_today()
        try:
            first = date(last.year - 1, last.month, 1)
        except ValueError:  # a 'to' in year 1
            first = date.min
    return day_range(first, last, default_days=30, max_days=REPORT_MAX_DAYS)


async def _report(request: Request, pool, user, name: str, period: Period, sql: str, first: date | None,
                  last: date | None, region: str | None, page: Page):
    first, last = _days(period, first, last)
    args = [first, last, region, user.region_filter()]
    if wants_csv(request):  # every row, streamed; paging is for JSON
        sql = sql.rsplit(" LIMIT ", 1)[0]
        return stream_query(pool, sql, args, request.query_params.get("lang"),
                            f"{name}_{period.value}_{first}_{last}")
    async with pool.acquire() as con:
        stmt = await con.prepare(sql)
        rows = await stmt.fetch(*args, page.fetch, page.offset)
        columns = [a.name for a in stmt.get_attributes()]
    rows, nxt = page.done(rows)
    return ReportPublic(report=name, period=period, first_day=first, last_day=last, columns=columns,
                        data=[dict(r) for r in rows], count=len(rows), next_cursor=nxt)


From = Annotated[date | None, Query(alias="from", description="first China day (YYYY-MM-DD); default: 31 days "
                                                                "(daily) or 12 months (monthly) back")]
To = Annotated[date | None, Query(description="last China day, inclusive (default: today)")]
Region = Annotated[str | None, Query(pattern=REGION_PATTERN)]
PageDep = Annotated[Page, Depends(paging(default=1000, maximum=10000))]
_CSV = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}


@router.get("/emissions", response_model=ReportPublic, responses=_CSV)
async def emissions(request: Request, pool: PoolDep, user: CurrentUser, period: Period = Period.DAILY,
                    from_: From = None, to: To = None, region: Region = None, page: PageDep = Page(1000)):
    """Daily emissions per pollution source and pollutant (env_source_daily)."""
    return await _report(request, pool, user, "emissions", period, emissions_sql(period), from_, to, region, page)


@router.get("/data-validity", response_model=ReportPublic, responses=_CSV)
async def data_validity(request: Request, pool: PoolDep, user: CurrentUser, period: Period = Period.DAILY,
                        from_: From = None, to: To = None, region: Region = None, page: PageDep = Page(1000)):
    """Valid-data rate per source (env_completeness_daily)."""
    return await _report(request, pool, user, "data-validity", period, validity_sql(period), from_, to, region, page)


@router.get("/water-compliance", response_model=ReportPublic, responses=_CSV)
async def water_compliance(request: Request, pool: PoolDep, user: CurrentUser, period: Period = Period.MONTHLY,
                           group: WaterGroup = WaterGroup.STATION, from_: From = None, to: To = None,
                           region: Region = None, page: PageDep = Page(1000)):
    """Water-class compliance per station or per river section (env_water_daily, GB 3838-2002)."""
    return await _report(request, pool, user, f"water-compliance-{group.value}", period, water_sql(period, group),
                         from_, to, region, page)


@router.get("/vehicle-assessment", response_model=ReportPublic, responses=_CSV)
async def vehicle_assessment(request: Request, pool: PoolDep, user: CurrentUser, period: Period = Period.MONTHLY,
                             from_: From = None, to: To = None, region: Region = None, page: PageDep = Page(1000)):
    """两客一危 assessment per enterprise (vehicle_kpis, vehicle_violations)."""
    return await _report(request, pool, user, "vehicle-assessment", period, vehicles_sql(period), from_, to, region,
                         page)


@router.get("/grid-voltage", response_model=ReportPublic, responses=_CSV)
async def grid_voltage(request: Request, pool: PoolDep, user: CurrentUser, period: Period = Period.MONTHLY,
                       from_: From = None, to: To = None, region: Region = None, page: PageDep = Page(1000)):
    """Voltage qualification rate per feeder (grid_quality_daily)."""
    return await _report(request, pool, user, "grid-voltage", period, grid_sql(period), from_, to, region, page)


@router.get("/meter-collection", response_model=ReportPublic, responses=_CSV)
async def meter_collection(request: Request, pool: PoolDep, user: CurrentUser, period: Period = Period.MONTHLY,
                           from_: From = None, to: To = None, region: Region = None, page: PageDep = Page(1000)):
    """Meter collection rate per district (meter_collection_daily)."""
    return await _report(request, pool, user, "meter-collection", period, meters_sql(period), from_, to, region,
                         page)
