-- Energy and transport derived data (issue 6): 两客一危 violations and KPIs, power quality, outages,
-- transformer warnings, feeder load forecasts, 四表合一 consumption, meter anomalies, collection rates.
-- Written by the derive jobs ingest/jobs/{vehicles,grid,meters}.py with upserts on the keys below, so a
-- re-run over the same window changes rows in place and never adds duplicates.
--
-- Registry metadata lives in devices.attrs (jsonb). Keys read by the jobs (all optional):
--   vehicle stream: vehicle_class   'coach_line' | 'coach_charter' | 'hazmat' (overspeed limit by class)
--                   enterprise      operating company (KPI group); missing -> '(unassigned)'
--                   networked       false when the terminal is not registered on the platform (入网)
--                   night_ban       true for long-distance coaches under the 02:00-05:00 ban
--                                   (default: true for coach_line, false otherwise)
--                   night_exempt    [from, to] ISO 8601 instants: ban exemption (接驳运输, permit)
--                   route           name of a geofences row of kind 'route' (fixed-route coaches)
--   grid stream:    kind            'meter' (default) | 'transformer'
--                   feeder          feeder name (outages, load forecast)
--                   voltage_class   '220V' | '20kV' (20 kV and below, three-phase) | '35kV' (35 kV and above)
--                   u_nom           nominal voltage of Ua/Ub/Uc in V (default 220; 35 kV class: line volts)
--                   line_voltages   true when Ua/Ub/Uc are line-to-line
--                   rated_a         rated current in A (overload rule; 0 or missing: off)
--                   temp_limit_c    transformer top-oil temperature alarm limit (default 85 degC)
--                   rated_kw        transformer rating: load % = P / rated_kw (load trend warning)
--   meter stream:   meter_type      'electricity' | 'water' | 'gas' | 'heat' (default: from the metric)
--                   register_width  register modulus, e.g. 1000000 for XXXXXX.XX (default 1e6)
--                   max_rate_per_h  plausible peak use per hour (jump detection; 0: off)
--                   concentrator    集中器 collecting the meter (collection success rate)
--                   slots_per_day   expected readings a day (default 96)

-- Restricted areas (hazardous-goods trucks) and fixed routes (coaches), as (lat, lon) WGS-84 vertex lists.
CREATE TABLE geofences (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    region     text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('restricted', 'route')),
    points     jsonb NOT NULL,                 -- [[lat, lon], ...]; polygons are implicitly closed
    enabled    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per violation episode. aux: geofence id (geofence, route_deviation), JT/T 808 alarm bit
-- (terminal_alarm), else 0. open: the condition still held at the end of the data seen so far.
CREATE TABLE vehicle_violations (
    device     integer NOT NULL REFERENCES devices (id),
    rule       text NOT NULL,
    aux        integer NOT NULL DEFAULT 0,
    start_time timestamptz NOT NULL,
    end_time   timestamptz NOT NULL,
    value      double precision,
    open       boolean NOT NULL DEFAULT false,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, rule, aux, start_time)
);
CREATE INDEX vehicle_violations_start ON vehicle_violations (start_time DESC);
CREATE INDEX vehicle_violations_rule_start ON vehicle_violations (rule, start_time DESC);

-- Regulator KPIs per China day; scope 'enterprise' (grp = enterprise within region) or 'region' (grp = region).
CREATE TABLE vehicle_kpis (
    day                date NOT NULL,
    region             text NOT NULL,
    scope              text NOT NULL CHECK (scope IN ('enterprise', 'region')),
    grp                text NOT NULL,
    registered         integer NOT NULL,
    networked          integer NOT NULL,
    online             integer NOT NULL,
    network_rate       double precision,          -- 入网率
    online_rate        double precision,          -- 上线率
    track_completeness double precision,          -- 轨迹完整率
    valid_rate         double precision,          -- 数据合格率
    drift_rate         double precision,          -- 漂移率 (vehicles)
    drift_point_rate   double precision,
    overspeed_count    integer NOT NULL DEFAULT 0,
    fatigue_hours      double precision NOT NULL DEFAULT 0,
    night_violations   integer NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, region, scope, grp)
);

-- Power quality per meter and China day (GB/T 12325 / 15945 / 15543 rates, overload and low-PF counts).
CREATE TABLE grid_quality_daily (
    device            integer NOT NULL REFERENCES devices (id),
    day               date NOT NULL,
    samples           integer NOT NULL,
    interruptions     integer NOT NULL,
    voltage_rate      double precision,
    frequency_rate    double precision,
    unbalance_rate    double precision,
    unbalance_day_ok  boolean,
    kv35_day_ok       boolean,
    dev_max_pct       double precision,
    dev_min_pct       double precision,
    unbalance_max_pct double precision,
    overload_samples  integer NOT NULL DEFAULT 0,
    low_pf_samples    integer NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, day)
);
CREATE INDEX grid_quality_daily_day ON grid_quality_daily (day DESC);

-- Power-quality episodes per meter (voltage, frequency, unbalance, overload, low_pf, collapse).
CREATE TABLE grid_events (
    device     integer NOT NULL REFERENCES devices (id),
    kind       text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time   timestamptz NOT NULL,
    open       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, kind, start_time)
);

-- Feeder outages: every meter of the feeder silent or collapsed for at least the configured time.
CREATE TABLE grid_outages (
    region     text NOT NULL,
    feeder     text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time   timestamptz NOT NULL,
    open       boolean NOT NULL DEFAULT false,
    meters     integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, feeder, start_time)
);

-- Latest trend evaluation per transformer and quantity ('oil_temp' degC, 'load_pct' % of rating).
CREATE TABLE transformer_warnings (
    device       integer NOT NULL REFERENCES devices (id),
    quantity     text NOT NULL,
    evaluated_at timestamptz NOT NULL,
    level        double precision,
    slope_per_h  double precision,
    limit_value  double precision NOT NULL,
    eta          timestamptz,                   -- when the trend reaches the limit (NULL: not within reach)
    warn         boolean NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, quantity)
);

-- Latest load forecast per feeder (kW), one row per target time.
CREATE TABLE feeder_forecasts (
    region      text NOT NULL,
    feeder      text NOT NULL,
    target_time timestamptz NOT NULL,
    issued_at   timestamptz NOT NULL,
    load_kw     double precision NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, feeder, target_time)
);

-- Daily consumption per meter register (metric) and China day; complete = no unusable interval.
CREATE TABLE meter_consumption_daily (
    device               integer NOT NULL REFERENCES devices (id),
    metric               text NOT NULL,
    day                  date NOT NULL,
    consumption          double precision NOT NULL,
    readings             integer NOT NULL,
    complete             boolean NOT NULL,
    backwards            integer NOT NULL DEFAULT 0,
    min_rate_per_h       double precision,
    min_night_rate_per_h double precision,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, metric, day)
);
CREATE INDEX meter_consumption_daily_day ON meter_consumption_daily (day DESC);

-- Register events (backwards, reset, replaced, jump, rollover) and day-run rules (zero_consumption,
-- night_leak, gas_never_stops). value: the register (events) or the run length in days (runs).
CREATE TABLE meter_anomalies (
    device     integer NOT NULL REFERENCES devices (id),
    metric     text NOT NULL,
    kind       text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time   timestamptz NOT NULL,
    value      double precision,
    previous   double precision,
    open       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, metric, kind, start_time)
);
CREATE INDEX meter_anomalies_start ON meter_anomalies (start_time DESC);

-- 采集成功率 per concentrator and China day.
CREATE TABLE meter_collection_daily (
    region       text NOT NULL,
    concentrator text NOT NULL,
    day          date NOT NULL,
    meters       integer NOT NULL,
    expected     integer NOT NULL,
    received     integer NOT NULL,
    success_rate double precision,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, concentrator, day)
);

INSERT INTO metrics (name, unit, stream, description) VALUES
    ('oil_temp', 'degC', 'grid', 'transformer top-oil temperature'),
    ('meter_replaced', NULL, 'meter', 'collector-reported meter replacement; value: new start register')
ON CONFLICT (name) DO NOTHING;
