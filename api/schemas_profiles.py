"""Response models of the shipped profiles' derived data (charging, coldchain, energy); lists as
``{data, count}``."""
from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel

from wulian.api.paging import ListPage


class UtilisationRow(BaseModel):
    key: str  # the charger's device id, the station or the district (see ``by``)
    district: str | None = None
    day: date
    chargers: int
    utilisation: float  # charging time / time, over the group's chargers
    charging_h: float
    fault_h: float
    offline_h: float


class UtilisationPublic(ListPage):
    by: str
    data: list[UtilisationRow]


class TripPublic(BaseModel):
    device_id: str
    region: str
    start_time: datetime
    end_time: datetime
    open: bool
    low_c: float
    high_c: float
    duration_min: float
    compliance_pct: float | None
    minutes_out_of_range: float
    minutes_no_data: float
    max_temp: float | None
    min_temp: float | None
    readings: int


class TripsPublic(ListPage):
    data: list[TripPublic]


class EnergyDay(BaseModel):
    region: str
    enterprise: str
    day: date
    meters: int
    electricity_kwh: float
    gas_m3: float
    steam_t: float
    water_t: float
    tce: float  # tonnes of standard coal (GB/T 2589-2020)


class EnergyDaysPublic(ListPage):
    data: list[EnergyDay]


class EnergyAnomaly(BaseModel):
    region: str
    enterprise: str
    start_time: datetime
    end_time: datetime
    open: bool
    hours: int
    consumption_kwh: float
    baseline_kwh: float


class EnergyAnomaliesPublic(ListPage):
    data: list[EnergyAnomaly]
