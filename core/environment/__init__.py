"""Environment rules (issue 7), the pure part: pollution sources, air quality, the Lianjiang watershed.

* ``validity``  - HJ 76 minute -> hour -> day aggregation with validity, valid-data rate, CN 2061 check
* ``sources``   - reference-O2 conversion, emission mass, exceedance episodes, boundary monitors
* ``aqi``       - exact HJ 633-2012 / HJ 633-2026 AQI for one set of concentrations (Decimal)
* ``aqi_series``- station x hour/day AQI grids (numba), heavy-pollution warnings, city AQI
* ``water``     - GB 3838-2002 single-factor classes, station targets
* ``river`` / ``pulse`` - stations along the river, travel time, pulse tracing
* ``editions``  - which standard edition applies to a timestamp; ``tables`` - the standards' numbers
* ``episodes``  - the ``Episode`` record every rule reports; ``codes`` - HJ 212 codes -> rule names
* ``warmup``    - ``warmup()`` compiles/loads every kernel before the first batch
"""
