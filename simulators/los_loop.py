"""The Los-loop week shipped with the package: 207 Los Angeles loop detectors, 2012-03-01..07, 5-minute
speeds in mph, and their road adjacency, xz-compressed in ``simulators/data/los_loop`` (its README gives
the source, licence and the published evaluation protocol). The one way code reaches the data set."""
from __future__ import annotations

import os
from importlib.resources import files
from importlib.resources.abc import Traversable

from wulian.core.traffic.evaluation import TrafficDataset, load_dataset

PACKAGED = files("simulators") / "data" / "los_loop"
PACKAGED_LABEL = "packaged Los-loop week"  # what reports print as the data source when no directory is given


def load_los_loop(data_dir: str | os.PathLike | Traversable | None = None) -> TrafficDataset:
    """The packaged week, or the same two files (plain or .xz) from ``data_dir``: a user's own roads."""
    return load_dataset(PACKAGED if data_dir is None else data_dir)
