"""Response models of the API (``XPublic``; lists as ``{data, count}``)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class Health(BaseModel):
    status: str
    database: bool
    broker: bool


class DevicePublic(BaseModel):
    device_id: str
    region: str
    stream: str
    device_type: str | None = None
    name: str | None = None
    attrs: dict[str, Any] = {}
    auto_registered: bool
    created_at: datetime
    last_seen: datetime | None = None
    online: bool


class DevicesPublic(BaseModel):
    data: list[DevicePublic]
    count: int


class LatestValue(BaseModel):
    metric: str
    time: datetime
    value: float
    flag: str


class LatestPublic(BaseModel):
    device_id: str
    stream: str
    values: list[LatestValue] = []
    position: dict[str, Any] | None = None
    traffic: dict[str, Any] | None = None


class ReadingBucket(BaseModel):
    time: datetime
    avg: float
    min: float
    max: float
    count: int


class ReadingsPublic(BaseModel):
    device_id: str
    metric: str
    bucket: str
    data: list[ReadingBucket]
    count: int
