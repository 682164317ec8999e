"""重点污染源 rules: reference-oxygen conversion (折算), emission mass, exceedance episodes, and
petrochemical boundary monitors (企业边界) with per-plant limits.

Units: stack-gas concentrations mg/m³ (dry, standard state, as CEMS report them), flow m³/s
(HJ 212 a00000); wastewater concentrations mg/L, flow L/s (w00000). In both cases
mg/unit x unit/s x 3600 s / 1e6 = kg per hour, so one formula serves both media.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from wulian.core.timebase import NS_PER_HOUR
from wulian.core.environment.episodes import Episode, episodes_from_grid
from wulian.core.environment.validity import HourlyGrid

# Default reference O2 (%) per source type, from the emission standards that set them. Each source in
# the registry may override it (``SourceSpec.reference_o2``).
DEFAULT_REFERENCE_O2: dict[str, float] = {
    "coal_boiler": 9.0,  # GB 13271-2014 燃煤锅炉
    "oil_gas_boiler": 3.5,  # GB 13271-2014 燃油、燃气锅炉
    "power_coal": 6.0,  # GB 13223-2011 燃煤发电锅炉
    "power_oil_gas": 3.0,  # GB 13223-2011 燃油/燃气锅炉
    "gas_turbine": 15.0,  # GB 13223-2011 燃气轮机组
    "waste_incinerator": 11.0,  # GB 18485-2014 生活垃圾焚烧
    "hazardous_incinerator": 11.0,  # GB 18484-2020 危险废物焚烧
    "cement_kiln": 10.0,  # GB 4915-2013 水泥窑
    "industrial_kiln": 9.0,  # 工业炉窑 (2019 综合治理方案 基准含氧量)
}

# Default enterprise-boundary limits (mg/m³, hourly mean) for petrochemical plants; per-plant limits in
# the registry replace them. GB 31570-2015 / GB 31571-2015 企业边界; H2S GB 14554-93 class II (new).
DEFAULT_BOUNDARY_LIMITS: dict[str, float] = {
    "NMHC": 4.0,
    "benzene": 0.4,
    "toluene": 0.8,
    "xylene": 0.8,
    "H2S": 0.06,
}

O2_AIR = 21.0  # % O2 in air, the conversion's fixed point


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A pollution-source outlet in the registry."""

    source_id: str
    medium: str  # "gas" (stack) or "water" (wastewater outlet)
    limits: Mapping[str, float] = field(default_factory=dict)  # pollutant -> permit limit, hourly basis
    source_type: str = ""  # key of DEFAULT_REFERENCE_O2 (gas only)
    reference_o2: float | None = None  # overrides the source type's default
    min_valid_rate: float = 0.9  # daily valid-data rate below which a completeness alert is raised

    def reference_o2_pct(self, defaults: Mapping[str, float] = DEFAULT_REFERENCE_O2) -> float | None:
        """Reference O2 for conversion; None for wastewater or gas sources without one (no conversion)."""
        if self.medium != "gas":
            return None
        if self.reference_o2 is not None:
            return float(self.reference_o2)
        return defaults.get(self.source_type)


def o2_convert(
    measured: np.ndarray | float, o2_measured: np.ndarray | float, o2_reference: float,
    o2_ceiling: float | None = None,
) -> np.ndarray:
    """折算浓度 C = C_measured x (21 - O2_ref) / (21 - O2_measured) (GB 13271-2014 §5.2, HJ 75-2017).

    O2 at or above 21 % (no combustion gas at all) gives NaN. ``o2_ceiling`` clips the measured O2 first
    where a local rule caps it (e.g. start-up and shut-down periods).
    """
    c = np.asarray(measured, dtype=np.float64)
    o2 = np.asarray(o2_measured, dtype=np.float64)
    if o2_ceiling is not None:
        o2 = np.minimum(o2, o2_ceiling)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(o2 < O2_AIR, c * (O2_AIR - o2_reference) / (O2_AIR - o2), np.nan)


def converted_hourly(conc: HourlyGrid, o2: HourlyGrid, o2_reference: float,
                     o2_ceiling: float | None = None) -> HourlyGrid:
    """Hourly converted concentration from the hourly means of the pollutant and of O2 (same rows).

    An hour is valid only when both the pollutant and the O2 hour are valid.
    """
    mean = o2_convert(conc.mean, o2.mean, o2_reference, o2_ceiling)
    valid = conc.valid & o2.valid & np.isfinite(mean)
    return HourlyGrid(conc.t0_ns, mean, conc.n_valid_minutes, conc.n_minutes, valid)


@dataclass(frozen=True, slots=True)
class EmissionMass:
    """Emission mass per hour and per China day, kg; only hours where concentration and flow are valid."""

    hourly_kg: np.ndarray  # (n, n_hours), NaN where not computable
    daily_kg: np.ndarray  # (n, n_days), sum of the day's computable hours
    daily_hours: np.ndarray  # how many hours each daily sum covers


def emission_mass(conc: HourlyGrid, flow: HourlyGrid) -> EmissionMass:
    """Mass = measured (not converted) hourly mean concentration x hourly mean flow x 3600 s / 1e6
    (HJ 75: emission uses the actual dry standard concentration and flow). Rows must correspond."""
    ok = conc.valid & flow.valid
    kg = np.where(ok, conc.mean * flow.mean * 3600.0 / 1e6, np.nan)
    n, n_days = kg.shape[0], kg.shape[1] // 24
    per_day = kg[:, : n_days * 24].reshape(n, n_days, 24)
    hours = ok[:, : n_days * 24].reshape(n, n_days, 24).sum(axis=2)
    return EmissionMass(kg, np.nansum(per_day, axis=2), hours)


def exceedance_episodes(
    hourly: HourlyGrid,
    subjects: list[str],
    items: list[str],
    limits: np.ndarray | list[float],
    *,
    rule: str = "source_exceedance",
    basis: str = "converted 1-h mean",
    min_hours: int = 1,
) -> list[Episode]:
    """Episodes of consecutive valid hours whose mean is above the row's limit. An invalid or missing
    hour ends an episode: an exceedance is only ever asserted on valid data."""
    lim = np.asarray(limits, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        cond = hourly.valid & (hourly.mean > lim)
    return episodes_from_grid(
        cond, np.nan_to_num(hourly.mean, nan=-np.inf), hourly.t0_ns, NS_PER_HOUR,
        rule=rule, subjects=subjects, items=items, thresholds=lim[:, 0], min_periods=min_hours, basis=basis,
    )


def boundary_exceedances(
    hourly: HourlyGrid,
    plants: list[str],
    pollutants: list[str],
    plant_limits: Mapping[str, Mapping[str, float]],
    min_hours: int = 1,
) -> list[Episode]:
    """Petrochemical boundary monitors: row k is plant ``plants[k]`` measuring ``pollutants[k]``; the
    limit is the plant's own (``plant_limits[plant][pollutant]``) or DEFAULT_BOUNDARY_LIMITS. Rows with
    no limit are not judged."""
    lim = np.array(
        [plant_limits.get(p, {}).get(q, DEFAULT_BOUNDARY_LIMITS.get(q, np.inf))
         for p, q in zip(plants, pollutants)],
        dtype=np.float64,
    )
    return exceedance_episodes(hourly, plants, pollutants, lim, rule="boundary_exceedance",
                               basis="boundary 1-h mean", min_hours=min_hours)



@dataclass(frozen=True, slots=True)
class SourceHours:
    """Everything derived for one source over an hourly grid; rows follow ``pollutants``."""

    source_id: str
    pollutants: tuple[str, ...]
    measured: HourlyGrid
    judged: HourlyGrid  # converted to reference O2 for stack gas with one, else the measured values
    reference_o2: float | None  # None: no conversion applied (wastewater, or no reference O2 known)
    mass: EmissionMass | None  # None without a flow series
    episodes: list[Episode]


def _rows(grid: HourlyGrid, n: int) -> HourlyGrid:
    """A one-row grid (O2, flow) repeated for n pollutant rows."""
    rep = (lambda a: np.repeat(a, n, axis=0)) if grid.mean.shape[0] == 1 else (lambda a: a)
    return HourlyGrid(grid.t0_ns, rep(grid.mean), rep(grid.n_valid_minutes), rep(grid.n_minutes),
                      rep(grid.valid))


def evaluate_source(
    spec: SourceSpec,
    measured: HourlyGrid,
    pollutants: Sequence[str],
    o2: HourlyGrid | None = None,
    flow: HourlyGrid | None = None,
    *,
    reference_o2_defaults: Mapping[str, float] = DEFAULT_REFERENCE_O2,
    o2_ceiling: float | None = None,
    min_hours: int = 1,
) -> SourceHours:
    """One source's hours: converted concentration (stack gas with a reference O2 and an O2 series),
    emission mass (with a flow series), and exceedance episodes against the registry's limits, judged on
    the converted 1-h mean. Pollutants without a limit in ``spec.limits`` are not judged."""
    pollutants = tuple(pollutants)
    ref = spec.reference_o2_pct(reference_o2_defaults)
    judged, basis = measured, "measured 1-h mean"
    if ref is not None and o2 is not None:
        judged = converted_hourly(measured, _rows(o2, len(pollutants)), ref, o2_ceiling)
        basis = f"converted 1-h mean at {ref:g} % O2"
    else:
        ref = None
    mass = emission_mass(measured, _rows(flow, len(pollutants))) if flow is not None else None
    limits = np.array([spec.limits.get(p, np.inf) for p in pollutants], dtype=np.float64)
    episodes = exceedance_episodes(judged, [spec.source_id] * len(pollutants), list(pollutants), limits,
                                   basis=basis, min_hours=min_hours)
    return SourceHours(spec.source_id, pollutants, measured, judged, ref, mass, episodes)
