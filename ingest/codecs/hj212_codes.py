"""HJ 212 pollutant code tables: 2017 codes (HJ 212-2017 Appendix B) and the 2005 codes they replaced.

2005 codes are short (``01``, ``001``, ``B01``) and were assigned per medium, so which table applies is
decided by the system code ST (gas or water) and the Flag version bits. 2017 codes (``a21026``,
``w01018``) are unique on their own. ``lookup`` maps either to one ``PollutantCode`` whose ``code`` is
the 2017 code when one exists, so a device keeps the same metric names across a firmware upgrade.
Unknown codes are not an error: ``lookup`` returns None and the caller keeps the code as sent.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PollutantCode:
    """One pollutant or parameter. ``table`` says where it comes from: ``2017``, ``2005`` or ``field``
    (a code used in practice outside Appendix B, such as a05024 for O3)."""

    code: str  # the 2017 code when one exists, else the code as listed
    name: str
    unit: str
    table: str
    code_2005: str | None = None


def _rows(table: str, rows: tuple[tuple[str, str | None, str, str], ...]) -> dict[str, PollutantCode]:
    return {code: PollutantCode(code, name, unit, table, old) for code, old, name, unit in rows}


# HJ 212-2017 Table B.1 (water, after HJ 525-2009): code, 2005 code, name, default unit.
WATER_2017 = _rows("2017", (
    ("w00000", "B01", "wastewater flow", "L/s"),
    ("w01001", "001", "pH", ""),
    ("w01009", None, "dissolved oxygen", "mg/L"),
    ("w01010", None, "water temperature", "°C"),
    ("w01012", "003", "suspended solids", "mg/L"),
    ("w01014", None, "conductivity", "µS/cm"),
    ("w01017", "010", "BOD5", "mg/L"),
    ("w01018", "011", "COD", "mg/L"),
    ("w01019", None, "permanganate index", "mg/L"),
    ("w01020", "015", "TOC", "mg/L"),
    ("w21001", "065", "total nitrogen", "mg/L"),
    ("w21003", "060", "ammonia nitrogen", "mg/L"),
    ("w21011", "101", "total phosphorus", "mg/L"),
    ("w20111", "020", "total mercury", "µg/L"),
    ("w20115", "022", "total cadmium", "µg/L"),
    ("w20116", "023", "total chromium", "mg/L"),
    ("w20117", "024", "hexavalent chromium", "µg/L"),
    ("w20119", "026", "total arsenic", "µg/L"),
    ("w20120", "027", "total lead", "µg/L"),
    ("w22001", "080", "petroleum oils", "mg/L"),
    ("w23002", "110", "volatile phenol", "mg/L"),
))

# HJ 212-2017 Table B.2 (gas, after HJ 524-2009). Particulate units: the table prints ng/m³ where
# ambient stations send µg/m³; units here are informative only and never used to convert.
GAS_2017 = _rows("2017", (
    ("a00000", "B02", "exhaust-gas flow", "m³/s"),
    ("a01001", None, "temperature", "°C"),
    ("a01002", None, "humidity", "%"),
    ("a01006", None, "air pressure", "kPa"),
    ("a01007", None, "wind speed", "m/s"),
    ("a01008", None, "wind direction", "°"),
    ("a01011", "S02", "flue-gas velocity", "m/s"),
    ("a01012", "S03", "flue-gas temperature", "°C"),
    ("a01013", "S08", "flue-gas pressure", "kPa"),
    ("a01014", "S05", "flue-gas humidity", "%"),
    ("a19001", "S01", "oxygen", "%"),
    ("a21001", "10", "NH3", "mg/m³"),
    ("a21002", "03", "NOx", "mg/m³"),
    ("a21003", None, "NO", "mg/m³"),
    ("a21004", None, "NO2", "mg/m³"),
    ("a21005", "04", "CO", "mg/m³"),
    ("a21026", "02", "SO2", "mg/m³"),
    ("a21028", "05", "H2S", "mg/m³"),
    ("a24088", None, "non-methane hydrocarbons", "mg/m³"),
    ("a34001", None, "TSP", ""),
    ("a34002", None, "PM10", ""),
    ("a34004", None, "PM2.5", ""),
    ("a34005", None, "PM1.0", ""),
    ("a34013", "01", "smoke dust", "mg/m³"),
))

# HJ 212-2017 Table B.3 (noise), dB.
NOISE_2017 = _rows("2017", tuple(
    (code, None, f"noise {code}", "dB")
    for code in ("LA", "L5", "L10", "L50", "L90", "L95", "Leq", "Ldn", "Ld", "Ln", "LMx", "LMn")
))

# Codes in wide use that Appendix B does not list.
FIELD_CODES = _rows("field", (
    ("a05024", None, "O3", "µg/m³"),
))

CODES_2017: dict[str, PollutantCode] = {**WATER_2017, **GAS_2017, **NOISE_2017, **FIELD_CODES}

# HJ/T 212-2005 codes, per medium, pointing at their 2017 successor when there is one.
_GAS_2005 = {c.code_2005: c for c in GAS_2017.values() if c.code_2005}
_WATER_2005 = {c.code_2005: c for c in WATER_2017.values() if c.code_2005}
_NOISE_2005 = {"B03": PollutantCode("B03", "noise", "dB", "2005", "B03")}
GAS_2005: dict[str, PollutantCode] = {**_GAS_2005, **_NOISE_2005}
WATER_2005: dict[str, PollutantCode] = {**_WATER_2005, **_NOISE_2005}

# System codes (HJ 212-2017 Table 5) whose 2005 codes come from the water table; all others use gas.
WATER_SYSTEMS = frozenset({"21", "24", "26", "32", "33", "34", "52"})
GAS_SYSTEMS = frozenset({"22", "27", "31", "39", "51"})


def tables_2005(st: str | None) -> tuple[dict[str, PollutantCode], ...]:
    """2005 tables to search for a system code, most likely first (both for unknown systems)."""
    if st in WATER_SYSTEMS:
        return (WATER_2005,)
    if st in GAS_SYSTEMS:
        return (GAS_2005,)
    return (GAS_2005, WATER_2005)


def lookup(code: str, st: str | None = None, version: int | None = None) -> PollutantCode | None:
    """The table entry for ``code`` as sent by a device with system code ``st`` and Flag version bits
    ``version`` (0 = 2005, 1 = 2017, higher = later editions, None = no Flag). None when unknown."""
    if version is not None and version >= 1:
        hit = CODES_2017.get(code)
        if hit is not None:
            return hit
        # Devices upgraded to 2017 framing sometimes keep their 2005 codes.
    for table in tables_2005(st):
        hit = table.get(code)
        if hit is not None:
            return hit
    return CODES_2017.get(code)
