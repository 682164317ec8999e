"""Standard coal (标准煤) per GB/T 2589-2020 《综合能耗计算通则》.

1 kgce is 29 307 kJ of low heating value (the standard's definition of 标准煤). Conversion coefficients
are the reference values of the standard's informative annexes; an enterprise with measured heating
values (a gas supplier's certified LHV, steam enthalpy from its own meters) uses those instead, as the
standard prefers measured values to the reference table:

* electricity, equivalent value (当量值): 3 600 kJ/kWh / 29 307 = 0.1229 kgce/kWh (Annex A, 电力(当量值));
* natural gas: 1.1000-1.3300 kgce/m³ (Annex A; 油田天然气 38 931 kJ/m³ = 1.3300, 气田天然气
  35 544 kJ/m³ = 1.2143); default 1.2143 (gas-field gas, what city pipelines mostly carry);
* steam: by its heat, enthalpy x mass / 29 307 kJ (the standard converts 热力/蒸汽 by heat content,
  0.03412 kgce/MJ); default enthalpy 2 763 kJ/kg (dry saturated steam near 0.4-1 MPa, what process
  steam meters usually report; set ``steam_enthalpy_kj_kg`` per enterprise);
* new water (新水): 0.0857 kgce/t, an energy-consuming working medium (耗能工质) counted by its
  equivalent energy (2.51 MJ/t, Annex B in the 2008 edition's numbering; 软化水 0.4857 kgce/t).
  The coefficient is the annex's energy value over the coal equivalent: 2 510 kJ / 29 307 kJ = 0.0857.
"""
from __future__ import annotations

from dataclasses import dataclass

KJ_PER_KGCE = 29_307.0
KGCE_PER_KWH_ELECTRICITY = 0.1229
KGCE_PER_M3_NATURAL_GAS = (1.1000, 1.3300)  # the annex's range
KGCE_PER_M3_NATURAL_GAS_DEFAULT = 1.2143  # 气田天然气 35 544 kJ/m³
KGCE_PER_MJ_HEAT = 0.03412  # 1000 / 29 307
STEAM_ENTHALPY_KJ_PER_KG_DEFAULT = 2763.0
KGCE_PER_T_WATER = 0.0857  # 新水

CARRIERS = ("electricity_kwh", "gas_m3", "steam_t", "water_t")  # the energy profile's register metrics


def kgce_of_steam(tonnes: float, enthalpy_kj_per_kg: float) -> float:
    """Steam by its enthalpy (GB/T 2589: heat carried / 29 307 kJ per kgce)."""
    return tonnes * 1000.0 * enthalpy_kj_per_kg / KJ_PER_KGCE


@dataclass(frozen=True, slots=True)
class CoalFactors:
    """One enterprise's coefficients (defaults: the reference values above)."""

    gas_kgce_per_m3: float = KGCE_PER_M3_NATURAL_GAS_DEFAULT
    steam_enthalpy_kj_kg: float = STEAM_ENTHALPY_KJ_PER_KG_DEFAULT

    @classmethod
    def of(cls, attrs: dict) -> "CoalFactors":
        """From a device's attrs (``gas_kgce_per_m3``, ``steam_enthalpy_kj_kg``); bad values fall back."""
        def num(key: str, default: float, lo: float, hi: float) -> float:
            try:
                x = float(attrs.get(key, default))
            except (TypeError, ValueError):
                return default
            return x if lo <= x <= hi else default
        return cls(num("gas_kgce_per_m3", KGCE_PER_M3_NATURAL_GAS_DEFAULT, *KGCE_PER_M3_NATURAL_GAS),
                   num("steam_enthalpy_kj_kg", STEAM_ENTHALPY_KJ_PER_KG_DEFAULT, 100.0, 4000.0))

    def tce(self, quantities: dict[str, float]) -> float:
        """Tonnes of standard coal of ``{carrier: quantity}`` (kWh, m³, t steam, t water)."""
        kgce = (quantities.get("electricity_kwh", 0.0) * KGCE_PER_KWH_ELECTRICITY
                + quantities.get("gas_m3", 0.0) * self.gas_kgce_per_m3
                + kgce_of_steam(quantities.get("steam_t", 0.0), self.steam_enthalpy_kj_kg)
                + quantities.get("water_t", 0.0) * KGCE_PER_T_WATER)
        return kgce / 1000.0
