"""The Los-loop week shipped with the package: 207 Los Angeles loop detectors, 2012-03-01..07, 5-minute
speeds in mph, and their road adjacency, xz-compressed in ``simulators/data/los_loop`` (its README gives
the source, licence and the published evaluation protocol). The one way code reaches the data set."""
from __future__ import annotations

import lzma
import os
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

PACKAGED = files(__package__) / "data" / "los_loop"
PACKAGED_LABEL = "packaged Los-loop week"  # what reports print as the data source when no directory is given
SPEED_FILE = "los_speed.csv"
ADJACENCY_FILE = "los_adj.csv"
PACKED_SUFFIX = ".xz"  # either file may also be stored xz-compressed (the packaged week is)


@dataclass(frozen=True, slots=True)
class TrafficDataset:
    speeds: np.ndarray  # float64 [T, N]
    adjacency: np.ndarray  # float64 [N, N]
    sensor_ids: tuple[str, ...]


def _read_text(directory: Path | Traversable, name: str) -> str:
    """``name`` or ``name.xz`` from ``directory`` (a path or package resources), decoded as UTF-8."""
    plain, packed = directory / name, directory / (name + PACKED_SUFFIX)
    if plain.is_file():
        return plain.read_bytes().decode("utf-8")
    if packed.is_file():
        try:
            return lzma.decompress(packed.read_bytes()).decode("utf-8")
        except lzma.LZMAError as exc:
            raise ValueError(f"{packed}: {exc}") from exc
    raise FileNotFoundError(f"neither {name} nor {name}{PACKED_SUFFIX} in {directory}")


def load_dataset(directory: str | os.PathLike | Traversable) -> TrafficDataset:
    """Read ``los_speed.csv`` (header of sensor ids, then one row per step) and ``los_adj.csv`` (N x N),
    each plain or xz-compressed, from a directory or a package's resources."""
    d = Path(directory) if isinstance(directory, (str, os.PathLike)) else directory
    lines = _read_text(d, SPEED_FILE).splitlines()
    if len(lines) < 2:
        raise ValueError(f"{SPEED_FILE} needs a header of sensor ids and at least one row")
    ids = tuple(s.strip() for s in lines[0].strip().split(","))
    speeds = np.loadtxt(lines[1:], delimiter=",", dtype=np.float64, ndmin=2)
    adjacency = np.loadtxt(_read_text(d, ADJACENCY_FILE).splitlines(), delimiter=",", dtype=np.float64, ndmin=2)
    if speeds.shape[1] != len(ids) or adjacency.shape != (len(ids), len(ids)):
        raise ValueError(f"{len(ids)} sensor ids, speeds {speeds.shape}, adjacency {adjacency.shape}")
    return TrafficDataset(speeds=speeds, adjacency=adjacency, sensor_ids=ids)



def load_los_loop(data_dir: str | os.PathLike | Traversable | None = None) -> TrafficDataset:
    """The packaged week, or the same two files (plain or .xz) from ``data_dir``: a user's own roads."""
    return load_dataset(PACKAGED if data_dir is None else data_dir)
