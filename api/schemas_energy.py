"""Response models of the energy and transport routes (vehicles, grid, meters); lists as ``{data, count}``."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel

from wulian.api.paging import ListPage


class TrackPoint(BaseModel):
    time: datetime
    lat: float
    lon: float
    speed_kmh: float
    heading: float
    altitude_m: float
    alarm_bits: int
    status_bits: int
    mileage_km: float | None = None


class TrackPublic(ListPage):
    device_id: str
    data: list[TrackPoint]
    truncated: bool = False  # more points than ``limit`` in the range: narrow it


class ViolationPublic(BaseModel):
    device_id: str
    region: str
    enterprise: str | None = None
    rule: str
    aux: int
    start_time: datetime
    end_time: datetime
    duration_s: float
    value: float | None = None
    open: bool
    details: dict[str, Any] = {}


class ViolationsPublic(ListPage):
    data: list[ViolationPublic]
class VehicleKpiPublic(BaseModel):
    day: date
    region: str
    scope: str
    group: str
    registered: int
    networked: int
    online: int
    network_rate: float | None = None
    online_rate: float | None = None
    track_completeness: float | None = None
    valid_rate: float | None = None
    drift_rate: float | None = None
    drift_point_rate: float | None = None
    overspeed_count: int
    fatigue_hours: float
    night_violations: int


class VehicleKpisPublic(ListPage):
    data: list[VehicleKpiPublic]
class GridQualityPublic(BaseModel):
    device_id: str
    region: str
    feeder: str | None = None
    day: date
    samples: int
    interruptions: int
    voltage_rate: float | None = None
    frequency_rate: float | None = None
    unbalance_rate: float | None = None
    unbalance_day_ok: bool | None = None
    kv35_day_ok: bool | None = None
    dev_max_pct: float | None = None
    dev_min_pct: float | None = None
    unbalance_max_pct: float | None = None
    overload_samples: int
    low_pf_samples: int


class GridQualityListPublic(ListPage):
    data: list[GridQualityPublic]
class ForecastPoint(BaseModel):
    time: datetime
    load_kw: float


class FeederForecastPublic(BaseModel):
    region: str
    feeder: str
    issued_at: datetime
    data: list[ForecastPoint]


class FeederForecastsPublic(ListPage):
    data: list[FeederForecastPublic]
class ConsumptionDay(BaseModel):
    metric: str
    day: date
    consumption: float
    readings: int
    complete: bool
    backwards: int
    min_rate_per_h: float | None = None
    min_night_rate_per_h: float | None = None


class ConsumptionPublic(ListPage):
    device_id: str
    data: list[ConsumptionDay]
class MeterAnomalyPublic(BaseModel):
    device_id: str
    region: str
    metric: str
    kind: str
    start_time: datetime
    end_time: datetime
    value: float | None = None
    previous: float | None = None
    open: bool


class MeterAnomaliesPublic(ListPage):
    data: list[MeterAnomalyPublic]
