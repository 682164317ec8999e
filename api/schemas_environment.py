"""Response models of the environment routes (air, sources, water); lists as ``{data, count}``."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from wulian.api.paging import ListPage


class AqiPublic(BaseModel):
    time: datetime  # start of the hour / China day
    station: str  # device_id, or the city for city AQI
    report: str  # hourly | daily
    edition: str  # HJ633-2012 | HJ633-2026
    aqi: int
    level: int
    category: str
    color: str
    primary_pollutants: list[str]
    iaqi: dict[str, int]
    concentrations: dict[str, float] = {}
    missing: int = 0
    publishable: bool = True
    stations: int | None = None  # city AQI: how many stations it averages


class AqiListPublic(ListPage):
    data: list[AqiPublic]
class SourceHourPublic(BaseModel):
    time: datetime
    pollutant: str
    measured: float | None = None
    converted: float | None = None
    reference_o2: float | None = None
    valid_minutes: int
    minutes: int
    valid: bool
    uploaded: float | None = None
    uploaded_mismatch: bool | None = None
    flow: float | None = None
    mass_kg: float | None = None
    limit_value: float | None = None
    exceeded: bool
    rule: str


class SourceHoursPublic(ListPage):
    device_id: str
    data: list[SourceHourPublic]
class ExceedancePublic(BaseModel):
    device_id: str
    region: str
    name: str | None = None
    pollutant: str
    rule: str
    start_time: datetime
    end_time: datetime
    hours: int
    peak: float
    peak_time: datetime
    limit_value: float
    basis: str
    open: bool


class ExceedancesPublic(ListPage):
    data: list[ExceedancePublic]
class WaterClassNow(BaseModel):
    time: datetime
    overall_class: str
    item_class: dict[str, str]
    means: dict[str, float]
    compliant: bool


class WaterStationPublic(BaseModel):
    device_id: str
    region: str
    name: str | None = None
    river: str | None = None
    km: float | None = None
    lake: bool = False
    target_class: str
    current: WaterClassNow | None = None  # latest hourly class
    today: WaterClassNow | None = None  # latest daily class
    compliance_7d: float | None = None  # share of compliant hours in the 7 days up to ``current``


class WaterStationsPublic(ListPage):
    data: list[WaterStationPublic]
class PulseEventPublic(BaseModel):
    time: datetime
    detected_at: str
    region: str
    river: str
    item: str
    peak_value: float
    peak_score: float
    entry_upstream: str | None = None
    entry_downstream: str
    entry_km_from: float | None = None
    entry_km_to: float
    confidence: float
    evidence: list[dict[str, Any]]


class PulseEventsPublic(ListPage):
    data: list[PulseEventPublic]
