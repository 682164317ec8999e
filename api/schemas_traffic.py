"""Response models of the traffic routes (``/v1/traffic``)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from wulian.api.paging import ListPage


class TrafficForecastPublic(BaseModel):
    segment: str  # the segment's detector (devices.device_id)
    region: str
    issued_at: datetime  # start of the last observed 5-minute bin the forecast was made from
    time: datetime  # start of the forecast bin
    horizon_min: int
    speed_kmh: float
    flow_vph: float | None = None
    model_id: int


class TrafficForecastsPublic(ListPage):
    data: list[TrafficForecastPublic]
class TrafficIncidentPublic(BaseModel):
    id: int
    segment: str
    region: str
    state: str  # open | cleared
    started_at: datetime
    detected_at: datetime
    ended_at: datetime | None = None
    expected_kmh: float | None = None
    observed_kmh: float | None = None
    min_speed_kmh: float | None = None
    min_residual_kmh: float
    band_kmh: float | None = None
    alert_id: int | None = None


class TrafficIncidentsPublic(ListPage):
    data: list[TrafficIncidentPublic]
