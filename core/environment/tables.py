"""Standards tables for the environment rules, owned by the project (never read from elsewhere at run time).

Numbers are copied from HJ 633-2012 Table 1, HJ 633-2026 Table 3 (IAQI breakpoints), HJ 633 Appendix A
(levels, categories, colours) and GB 3838-2002 Table 1 (surface water classes). Limits are kept as
strings so the exact path can build ``Decimal`` values and the kernels can build float64 arrays from
the very same text.
"""
from __future__ import annotations

from typing import Final

EDITION_2012: Final = "HJ633-2012"
EDITION_2026: Final = "HJ633-2026"
EDITIONS: Final = (EDITION_2012, EDITION_2026)  # index 0 / 1 in the kernels' edition arrays

IAQI_LEVELS: Final = (0, 50, 100, 150, 200, 300, 400, 500)

# Indicator keys (the names used by the CLI and by published worked examples). The kernels use the
# position in this tuple as the indicator index.
INDICATORS: Final = (
    "SO2_1H", "SO2_24H", "NO2_1H", "NO2_24H", "CO_1H", "CO_24H", "O3_1H", "O3_8H", "PM10_24H", "PM25_24H",
)
UNITS: Final = {k: ("mg/m3" if k.startswith("CO_") else "ug/m3") for k in INDICATORS}

# Label used when an indicator is a primary pollutant. O3 keeps its averaging period: the 2012
# real-time report names 臭氧1小时 and 臭氧8小时 separately.
POLLUTANT_LABEL: Final = {
    "SO2_1H": "SO2", "SO2_24H": "SO2", "NO2_1H": "NO2", "NO2_24H": "NO2", "CO_1H": "CO", "CO_24H": "CO",
    "O3_1H": "O3_1H", "O3_8H": "O3_8H", "PM10_24H": "PM10", "PM25_24H": "PM2.5",
}

_COMMON_BP: Final = {
    "SO2_24H": (0, 50, 150, 475, 800, 1600, 2100, 2620),
    "SO2_1H": (0, 150, 500, 650, 800, None, None, None),  # above 800: special case, see aqi.py
    "NO2_24H": (0, 40, 80, 180, 280, 565, 750, 940),
    "NO2_1H": (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    "CO_24H": (0, 2, 4, 14, 24, 36, 48, 60),
    "CO_1H": (0, 5, 10, 35, 60, 90, 120, 150),
    "O3_1H": (0, 160, 200, 300, 400, 800, 1000, 1200),
    "O3_8H": (0, 100, 160, 215, 265, 800, None, None),  # above 800: special case, see aqi.py
}

# IAQI breakpoints per edition; the only differences are the PM IAQI=100 points (HJ 633-2026 Table 3).
BREAKPOINTS: Final = {
    EDITION_2012: {
        **_COMMON_BP,
        "PM10_24H": (0, 50, 150, 250, 350, 420, 500, 600),
        "PM25_24H": (0, 35, 75, 115, 150, 250, 350, 500),
    },
    EDITION_2026: {
        **_COMMON_BP,
        "PM10_24H": (0, 50, 120, 250, 350, 420, 500, 600),
        "PM25_24H": (0, 35, 60, 115, 150, 250, 350, 500),
    },
}

# Which indicators make up each report (HJ 633-2012 §5.1, HJ 633-2026 §4.1/§4.2). PM keys carry the
# value evaluated against the 24-h column: in real time that is the 1-h value (CNEMC practice since
# 2014-01-01, written into HJ 633-2026) or, optionally for 2012, the 24-h moving mean.
REPORT_INDICATORS: Final = {
    (EDITION_2012, "hourly"): ("SO2_1H", "NO2_1H", "CO_1H", "O3_1H", "O3_8H", "PM10_24H", "PM25_24H"),
    (EDITION_2012, "daily"): ("SO2_24H", "NO2_24H", "CO_24H", "O3_1H", "O3_8H", "PM10_24H", "PM25_24H"),
    (EDITION_2026, "hourly"): ("SO2_1H", "NO2_1H", "CO_1H", "O3_1H", "PM10_24H", "PM25_24H"),
    (EDITION_2026, "daily"): ("SO2_24H", "NO2_24H", "CO_24H", "O3_8H", "PM10_24H", "PM25_24H"),
}


# AQI levels (identical in both editions; HJ 633-2026 writes the first band as 1~50).
# (upper AQI bound or None, level number, level, category, colour, RGB, hex)
AQI_CATEGORIES: Final = (
    (50, 1, "一级", "优", "绿色", (0, 228, 0), "#00E400"),
    (100, 2, "二级", "良", "黄色", (255, 255, 0), "#FFFF00"),
    (150, 3, "三级", "轻度污染", "橙色", (255, 126, 0), "#FF7E00"),
    (200, 4, "四级", "中度污染", "红色", (255, 0, 0), "#FF0000"),
    (300, 5, "五级", "重度污染", "紫色", (153, 0, 76), "#99004C"),
    (None, 6, "六级", "严重污染", "褐红色", (126, 0, 35), "#7E0023"),
)

# HJ 633-2012 Table 2 (空气质量指数及相关信息): per level, 对健康影响情况 (effect on health) and 建议采取的措施
# (advice), as published with every AQI report. HJ 633-2026 rewords them slightly (青少年儿童 for 儿童).
# Checked row by row against a reproduction of the 2012 Table 2 (issue 19): identical, except that the
# printed level-4 advice reads 户外锻练, a misprint of 锻炼 (level 3's spelling), which we correct.
AQI_HEALTH_ADVICE: Final = {
    1: ("空气质量令人满意，基本无空气污染", "各类人群可正常活动"),
    2: ("空气质量可接受，但某些污染物可能对极少数异常敏感人群健康有较弱影响", "极少数异常敏感人群应减少户外活动"),
    3: ("易感人群症状有轻度加剧，健康人群出现刺激症状",
        "儿童、老年人及心脏病、呼吸系统疾病患者应减少长时间、高强度的户外锻炼"),
    4: ("进一步加剧易感人群症状，可能对健康人群心脏、呼吸系统有影响",
        "儿童、老年人及心脏病、呼吸系统疾病患者避免长时间、高强度的户外锻炼，一般人群适量减少户外运动"),
    5: ("心脏病和肺病患者症状显著加剧，运动耐受力降低，健康人群普遍出现症状",
        "儿童、老年人和心脏病、肺病患者应停留在室内，停止户外运动，一般人群减少户外运动"),
    6: ("健康人群运动耐受力降低，有明显强烈症状，提前出现某些疾病",
        "儿童、老年人和病人应当留在室内，避免体力消耗，一般人群应避免户外活动"),
}

# --- GB 3838-2002 Table 1 -------------------------------------------------------------------------
WATER_CLASSES: Final = ("I", "II", "III", "IV", "V", "劣V")  # class number 1..6 in the kernels

# key -> (name, unit, comparison, limits for I..V). comparison: "le" (C <= limit), "ge" (C >= limit,
# DO only), "range" (pH 6~9 for every class). TP has a separate lake/reservoir column (TP_LAKE_LIMITS).
WATER_ITEMS: Final = {
    "pH": ("pH值", "dimensionless", "range", ("6", "9")),
    "DO": ("溶解氧", "mg/L", "ge", ("7.5", "6", "5", "3", "2")),
    "CODMn": ("高锰酸盐指数", "mg/L", "le", ("2", "4", "6", "10", "15")),
    "COD": ("化学需氧量", "mg/L", "le", ("15", "15", "20", "30", "40")),
    "BOD5": ("五日生化需氧量", "mg/L", "le", ("3", "3", "4", "6", "10")),
    "NH3_N": ("氨氮", "mg/L", "le", ("0.15", "0.5", "1.0", "1.5", "2.0")),
    "TP": ("总磷", "mg/L", "le", ("0.02", "0.1", "0.2", "0.3", "0.4")),
    "TN": ("总氮", "mg/L", "le", ("0.2", "0.5", "1.0", "1.5", "2.0")),
    "Cu": ("铜", "mg/L", "le", ("0.01", "1.0", "1.0", "1.0", "1.0")),
    "Zn": ("锌", "mg/L", "le", ("0.05", "1.0", "1.0", "2.0", "2.0")),
    "F": ("氟化物", "mg/L", "le", ("1.0", "1.0", "1.0", "1.5", "1.5")),
    "Se": ("硒", "mg/L", "le", ("0.01", "0.01", "0.01", "0.02", "0.02")),
    "As": ("砷", "mg/L", "le", ("0.05", "0.05", "0.05", "0.1", "0.1")),
    "Hg": ("汞", "mg/L", "le", ("0.00005", "0.00005", "0.0001", "0.001", "0.001")),
    "Cd": ("镉", "mg/L", "le", ("0.001", "0.005", "0.005", "0.005", "0.01")),
    "Cr6": ("铬(六价)", "mg/L", "le", ("0.01", "0.05", "0.05", "0.05", "0.1")),
    "Pb": ("铅", "mg/L", "le", ("0.01", "0.01", "0.05", "0.05", "0.1")),
    "CN": ("氰化物", "mg/L", "le", ("0.005", "0.05", "0.2", "0.2", "0.2")),
    "volatile_phenol": ("挥发酚", "mg/L", "le", ("0.002", "0.002", "0.005", "0.01", "0.1")),
    "petroleum": ("石油类", "mg/L", "le", ("0.05", "0.05", "0.05", "0.5", "1.0")),
    "LAS": ("阴离子表面活性剂", "mg/L", "le", ("0.2", "0.2", "0.2", "0.3", "0.3")),
    "sulfide": ("硫化物", "mg/L", "le", ("0.05", "0.1", "0.2", "0.5", "1.0")),
    "fecal_coliform": ("粪大肠菌群", "个/L", "le", ("200", "2000", "10000", "20000", "40000")),
}
TP_LAKE_LIMITS: Final = ("0.01", "0.025", "0.05", "0.1", "0.2")

# The 21 routine evaluation items (Table 1 without water temperature, TN and fecal coliform;
# 地表水环境质量评价办法(试行) 环办[2011]22号). TN and fecal coliform can still be classed on request.
ROUTINE_WATER_ITEMS: Final = (
    "pH", "DO", "CODMn", "NH3_N", "TP", "BOD5", "COD", "petroleum", "volatile_phenol", "Hg", "Cu", "Zn",
    "Pb", "Cd", "Cr6", "As", "Se", "F", "CN", "sulfide", "LAS",
)
WATER_QUALITY_LABEL: Final = {"I": "优", "II": "优", "III": "良好", "IV": "轻度污染", "V": "中度污染", "劣V": "重度污染"}
