-- Environment (issue 7): derived hypertables written by the jobs in ingest/jobs/ (source_hourly,
-- air_quality, water_quality). Every table has a unique key that includes its time column, so a job
-- re-run over the same hours upserts the same rows. Times are UTC; "day" rows start at a China
-- midnight (Asia/Shanghai). Each row names the standard/edition that produced it.
--
-- Registry metadata lives in devices.attrs (jsonb); keys the jobs read:
--   pollution stream: source_kind  'stack' (stack gas, default) | 'outlet' (wastewater) | 'boundary'
--                                  (petrochemical plant boundary monitor)
--                     source_type  key of core.environment.sources.DEFAULT_REFERENCE_O2 ('coal_boiler', ...)
--                     reference_o2 reference O2 in % (overrides the source type's default)
--                     limits       {pollutant: permit limit on the hourly basis}, e.g. {"SO2": 35}
--                                  (boundary monitors: the plant's own limits, else GB 31570/31571)
--                     plant        plant id of a boundary monitor
--                     min_valid_rate  daily valid-data rate below which an alert is raised (default 0.9)
--   air stream:       city         region of the city AQI the station counts for (default: its region)
--   water stream:     river        river name (stations of one river are traced together)
--                     km           chainage along the river, increasing downstream
--                     target_class 'I'..'V' (default 'III'); lake: true for lake/reservoir stretches
--                     flow_m3s     typical discharge at the station (travel time between stations)

-- Hourly values of pollution sources and boundary monitors, HJ 75/76 validity.
CREATE TABLE env_source_hourly (
    time            timestamptz NOT NULL,          -- start of the hour
    device          integer NOT NULL,
    pollutant       text NOT NULL,                 -- canonical name (SO2, NOx, PM, COD, NMHC, ...)
    measured        double precision,              -- mean of the hour's valid minutes
    converted       double precision,              -- at reference O2 (stack gas), else = measured
    reference_o2    real,                          -- NULL: no O2 conversion applied
    valid_minutes   smallint NOT NULL,
    minutes         smallint NOT NULL,             -- minutes with any sample
    valid           boolean NOT NULL,              -- >= 45 valid minutes (and a valid O2 hour when converted)
    uploaded        double precision,              -- device-made hourly value (HJ 212 CN 2061), as sent
    uploaded_mismatch boolean,                     -- uploaded differs from ours by > 5 % (NULL: not compared)
    flow            double precision,              -- mean flow, m3/s (gas) or L/s (water)
    mass_kg         double precision,              -- emission in the hour
    limit_value     double precision,              -- permit limit it was judged against
    exceeded        boolean NOT NULL DEFAULT false,
    rule            text NOT NULL                  -- validity rule and basis applied
);
SELECT create_hypertable('env_source_hourly', 'time', chunk_time_interval => interval '30 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_source_hourly_key ON env_source_hourly (device, pollutant, time DESC);
CREATE INDEX env_source_hourly_time ON env_source_hourly (time DESC);

-- Daily values per source and pollutant (China days, >= 20 valid hours) with the day's emission.
CREATE TABLE env_source_daily (
    time            timestamptz NOT NULL,          -- China midnight
    device          integer NOT NULL,
    pollutant       text NOT NULL,
    mean            double precision,
    valid_hours     smallint NOT NULL,
    valid           boolean NOT NULL,
    mass_kg         double precision,
    mass_hours      smallint,
    rule            text NOT NULL
);
SELECT create_hypertable('env_source_daily', 'time', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_source_daily_key ON env_source_daily (device, pollutant, time DESC);

-- Data completeness per device and China day: valid hours / (24 x monitored items).
CREATE TABLE env_completeness_daily (
    time            timestamptz NOT NULL,
    device          integer NOT NULL,
    valid_rate      double precision NOT NULL,
    items           smallint NOT NULL,
    min_rate        double precision NOT NULL
);
SELECT create_hypertable('env_completeness_daily', 'time', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_completeness_daily_key ON env_completeness_daily (device, time DESC);

-- Exceedance episodes (sources on the converted 1-h mean, boundary monitors on the 1-h mean). The alert
-- (rule source_exceedance / boundary_exceedance) carries the lifecycle; this keeps the facts.
CREATE TABLE env_exceedances (
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,          -- end of the last exceeding hour (so far, when open)
    device          integer NOT NULL,
    pollutant       text NOT NULL,
    rule            text NOT NULL,                 -- source_exceedance | boundary_exceedance
    peak            double precision NOT NULL,
    peak_time       timestamptz NOT NULL,
    hours           integer NOT NULL,
    limit_value     double precision NOT NULL,
    basis           text NOT NULL,
    open            boolean NOT NULL               -- still going at the end of the processed data
);
SELECT create_hypertable('env_exceedances', 'start_time', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_exceedances_key ON env_exceedances (device, pollutant, start_time DESC);
CREATE INDEX env_exceedances_start ON env_exceedances (start_time DESC);

-- AQI per station: hourly (real-time) and daily, HJ 633 edition by the period's start.
CREATE TABLE env_aqi_hourly (
    time            timestamptz NOT NULL,
    device          integer NOT NULL,
    edition         text NOT NULL,                 -- HJ633-2012 | HJ633-2026
    aqi             smallint NOT NULL,
    level           smallint NOT NULL,
    category        text NOT NULL,
    color           text NOT NULL,                 -- hex
    primary_pollutants text[] NOT NULL,
    iaqi            jsonb NOT NULL,                -- {indicator: IAQI}
    concentrations  jsonb NOT NULL,                -- {indicator: value used}
    missing         smallint NOT NULL,
    publishable     boolean NOT NULL
);
SELECT create_hypertable('env_aqi_hourly', 'time', chunk_time_interval => interval '30 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_aqi_hourly_key ON env_aqi_hourly (device, time DESC);
CREATE INDEX env_aqi_hourly_time ON env_aqi_hourly (time DESC);

CREATE TABLE env_aqi_daily (LIKE env_aqi_hourly INCLUDING DEFAULTS);
SELECT create_hypertable('env_aqi_daily', 'time', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_aqi_daily_key ON env_aqi_daily (device, time DESC);
CREATE INDEX env_aqi_daily_time ON env_aqi_daily (time DESC);

-- City AQI: HJ 663 means of each indicator over the city's stations, then HJ 633.
CREATE TABLE env_city_aqi (
    time            timestamptz NOT NULL,
    city            text NOT NULL,
    report          text NOT NULL CHECK (report IN ('hourly', 'daily')),
    edition         text NOT NULL,
    aqi             smallint NOT NULL,
    level           smallint NOT NULL,
    category        text NOT NULL,
    color           text NOT NULL,
    primary_pollutants text[] NOT NULL,
    iaqi            jsonb NOT NULL,
    stations        smallint NOT NULL
);
SELECT create_hypertable('env_city_aqi', 'time', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_city_aqi_key ON env_city_aqi (city, report, time DESC);

-- GB 3838-2002 class per water station, hourly and daily (single-factor, worst item).
CREATE TABLE env_water_hourly (
    time            timestamptz NOT NULL,
    device          integer NOT NULL,
    standard        text NOT NULL,                 -- GB3838-2002
    overall         smallint NOT NULL,             -- 1..6 = I..劣V
    overall_class   text NOT NULL,
    item_class      jsonb NOT NULL,                -- {item: "I".."劣V"}
    means           jsonb NOT NULL,                -- {item: mean in mg/L (pH dimensionless)}
    target          smallint NOT NULL,
    compliant       boolean NOT NULL               -- overall <= target
);
SELECT create_hypertable('env_water_hourly', 'time', chunk_time_interval => interval '30 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_water_hourly_key ON env_water_hourly (device, time DESC);
CREATE INDEX env_water_hourly_time ON env_water_hourly (time DESC);

CREATE TABLE env_water_daily (LIKE env_water_hourly INCLUDING DEFAULTS);
SELECT create_hypertable('env_water_daily', 'time', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_water_daily_key ON env_water_daily (device, time DESC);

-- Pollution pulses traced upstream: where it was seen, and the segment it most likely entered.
CREATE TABLE env_pulse_events (
    time            timestamptz NOT NULL,          -- peak at the detecting station
    device          integer NOT NULL,              -- the detecting (most downstream) station
    river           text NOT NULL,
    item            text NOT NULL,
    peak_value      double precision NOT NULL,
    peak_score      double precision NOT NULL,
    entry_upstream  text,                          -- station above the entry; NULL = above the first station
    entry_downstream text NOT NULL,                -- most upstream station that saw it
    entry_km_from   double precision,
    entry_km_to     double precision NOT NULL,
    confidence      double precision NOT NULL,
    evidence        jsonb NOT NULL
);
SELECT create_hypertable('env_pulse_events', 'time', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX env_pulse_events_key ON env_pulse_events (device, item, time DESC);
CREATE INDEX env_pulse_events_time ON env_pulse_events (time DESC);

-- Jobs find registry rows by stream; these let the API filter sources and rivers by attrs quickly.
CREATE INDEX devices_attrs_river ON devices ((attrs->>'river')) WHERE stream = 'water';
