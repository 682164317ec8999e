"""两客一危 (coaches, charter buses, hazardous-goods trucks): rules, JT/T 808 alarm bits, regulator KPIs."""
