"""HJ 212 pollutant codes -> the names the environment rules use, with the factor to their units.

Metric names from the codec are ``{code}-{field}`` (``a21026-Rtd``, ``a21026-Avg``, ``w21003-Avg``).
Factors convert the HJ 212 default unit to the unit of the standard the rule applies: GB 3838 limits are
mg/L, while HJ 212-2017 Table B.1 reports Hg, Cd, Cr(VI), As and Pb in µg/L. Ambient-air stations report
µg/m³ (CO mg/m³) whatever Table B.2 says (protocols.md §1.9 note); stack gas is mg/m³.
"""
from __future__ import annotations

from typing import Final

# Ambient air (AQI pollutants, names of core.environment.aqi_series.POLLUTANTS). a05024 (O3) is outside
# HJ 212-2017 appendix B but is what stations send.
AIR_CODES: Final = {"a21026": "SO2", "a21004": "NO2", "a21005": "CO", "a05024": "O3", "a34002": "PM10",
                    "a34004": "PM2.5"}

# Stack gas and wastewater outlets.
SOURCE_CODES: Final = {
    "a00000": "flow",  # m³/s exhaust-gas flow
    "a19001": "O2",  # %
    "a21026": "SO2", "a21002": "NOx", "a21003": "NO", "a21004": "NO2", "a21005": "CO", "a34013": "dust",
    "a24088": "NMHC", "a21028": "H2S", "a21001": "NH3",
    "w00000": "flow",  # L/s wastewater flow
    "w01018": "COD", "w21003": "NH3_N", "w21011": "TP", "w21001": "TN", "w01001": "pH",
}

# Surface water (keys of core.environment.tables.WATER_ITEMS) -> (code, factor to mg/L).
WATER_CODES: Final = {
    "w01001": ("pH", 1.0), "w01009": ("DO", 1.0), "w01019": ("CODMn", 1.0), "w01018": ("COD", 1.0),
    "w01017": ("BOD5", 1.0), "w21003": ("NH3_N", 1.0), "w21011": ("TP", 1.0), "w21001": ("TN", 1.0),
    "w22001": ("petroleum", 1.0), "w23002": ("volatile_phenol", 1.0), "w20111": ("Hg", 1e-3),
    "w20115": ("Cd", 1e-3), "w20117": ("Cr6", 1e-3), "w20119": ("As", 1e-3), "w20120": ("Pb", 1e-3),
}


def split_metric(metric: str) -> tuple[str, str]:
    """``a21026-Rtd`` -> (``a21026``, ``Rtd``); a bare name gives field ``""``."""
    code, _, field = metric.partition("-")
    return code, field


def water_item(metric: str) -> tuple[str, float] | None:
    """GB 3838 item key and unit factor for a water-station metric, None if it is not a GB 3838 item."""
    return WATER_CODES.get(split_metric(metric)[0])
