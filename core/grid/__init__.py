"""Smart grid: supply power quality (GB/T 12325 / 15945 / 15543), overload, outages, low power factor,
transformer trend warnings and feeder load forecasts."""
