"""A batch of values as typed arrays (struct of arrays): what the alarm engine evaluates.

Ingest builds one ``ReadingArrays`` per batch from its decoded messages (``ingest.pipeline.
reading_arrays``); the alarm service reads only this, not the pipeline's own records. Value ``i`` is
``metrics[metric[i]]`` of ``devices[device[i]]`` at ``ts_ns[i]``: the keys index the batch's small
tables, so a batch of thousands of values names each device and metric once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SeriesDevice:
    """A device as a series owner: its row id, its id, and the scope alarm rules select on."""

    id: int  # devices.id
    device_id: str
    region: str
    stream: str
    device_type: str | None


@dataclass(frozen=True, slots=True)
class ReadingArrays:
    devices: tuple[SeriesDevice, ...]
    metrics: tuple[str, ...]
    device: np.ndarray  # int32, index into ``devices``
    metric: np.ndarray  # int32, index into ``metrics``
    ts_ns: np.ndarray  # int64, UTC ns
    value: np.ndarray  # float64
    flag: np.ndarray  # uint8, the data flag's letter (ord), 0 for none

    def __post_init__(self) -> None:
        n = len(self.ts_ns)
        for name, dtype in (("device", np.int32), ("metric", np.int32), ("ts_ns", np.int64),
                            ("value", np.float64), ("flag", np.uint8)):
            a = getattr(self, name)
            if a.dtype != dtype or a.shape != (n,):
                raise ValueError(f"ReadingArrays.{name}: {a.dtype}{a.shape}, expected {np.dtype(dtype)}({n},)")

    def __len__(self) -> int:
        return len(self.ts_ns)

    @classmethod
    def empty(cls) -> "ReadingArrays":
        return cls((), (), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64),
                   np.empty(0, np.float64), np.empty(0, np.uint8))
