-- Wulian schema v1: registry, metric catalogue, narrow time-series hypertables, dead letters.
-- All times are timestamptz stored in UTC; China-time day buckets are done at query time with
-- time_bucket('1 day', time, 'Asia/Shanghai').
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE devices (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       text NOT NULL UNIQUE,          -- external id: topic segment, HJ 212 MN, JT/T 808 phone
    region          text NOT NULL,
    stream          text NOT NULL,
    device_type     text,
    name            text,
    attrs           jsonb NOT NULL DEFAULT '{}'::jsonb,
    auto_registered boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz
);
CREATE INDEX devices_region_stream ON devices (region, stream);

CREATE TABLE metrics (
    id          smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    unit        text,
    stream      text,
    description text,
    auto_added  boolean NOT NULL DEFAULT false
);

-- One row per (device, metric, time): the unique index makes redelivered messages idempotent.
CREATE TABLE readings (
    time   timestamptz NOT NULL,
    device integer NOT NULL,
    metric smallint NOT NULL,
    value  double precision NOT NULL,
    flag   text NOT NULL DEFAULT 'N'
);
SELECT create_hypertable('readings', 'time', chunk_time_interval => interval '1 day',
                         create_default_indexes => false);
CREATE UNIQUE INDEX readings_device_metric_time ON readings (device, metric, time DESC);
CREATE INDEX readings_time ON readings (time DESC);

CREATE TABLE vehicle_positions (
    time        timestamptz NOT NULL,
    device      integer NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_kmh   real NOT NULL DEFAULT 0,
    heading     real NOT NULL DEFAULT 0,
    altitude_m  real NOT NULL DEFAULT 0,
    alarm_bits  bigint NOT NULL DEFAULT 0,
    status_bits bigint NOT NULL DEFAULT 0,
    mileage_km  double precision,
    extra       jsonb
);
SELECT create_hypertable('vehicle_positions', 'time', chunk_time_interval => interval '1 day',
                         create_default_indexes => false);
CREATE UNIQUE INDEX vehicle_positions_device_time ON vehicle_positions (device, time DESC);
CREATE INDEX vehicle_positions_time ON vehicle_positions (time DESC);

CREATE TABLE traffic_observations (
    time      timestamptz NOT NULL,
    device    integer NOT NULL,          -- the segment's detector (devices.stream = 'traffic')
    speed_kmh real NOT NULL,
    flow_vph  real,
    occupancy real
);
SELECT create_hypertable('traffic_observations', 'time', chunk_time_interval => interval '7 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX traffic_observations_device_time ON traffic_observations (device, time DESC);
CREATE INDEX traffic_observations_time ON traffic_observations (time DESC);

-- Everything ingest refused, with why; the payload is kept verbatim for replay.
CREATE TABLE dead_letters (
    time      timestamptz NOT NULL DEFAULT now(),
    topic     text NOT NULL,
    device_id text,
    kind      text,
    reason    text NOT NULL,
    detail    text,
    payload   bytea
);
SELECT create_hypertable('dead_letters', 'time', chunk_time_interval => interval '7 days',
                         create_default_indexes => false);
CREATE INDEX dead_letters_time ON dead_letters (time DESC);
CREATE INDEX dead_letters_reason_time ON dead_letters (reason, time DESC);

-- Retention per hypertable, applied by drop_chunks on the ingest service's schedule.
CREATE TABLE retention_policies (
    hypertable text PRIMARY KEY,
    keep       interval NOT NULL
);
INSERT INTO retention_policies (hypertable, keep) VALUES
    ('readings', interval '400 days'),
    ('vehicle_positions', interval '180 days'),
    ('traffic_observations', interval '400 days'),
    ('dead_letters', interval '90 days');

-- Metric catalogue seeded with what the simulators and field codecs emit; others are auto-added.
INSERT INTO metrics (name, unit, stream, description) VALUES
    ('SO2', 'mg/m3', 'pollution', 'sulphur dioxide, stack gas'),
    ('NOx', 'mg/m3', 'pollution', 'nitrogen oxides, stack gas'),
    ('PM', 'mg/m3', 'pollution', 'particulate matter, stack gas'),
    ('O2', '%', 'pollution', 'oxygen content, stack gas'),
    ('flow', 'm3/h', 'pollution', 'stack gas flow'),
    ('COD', 'mg/L', 'pollution', 'chemical oxygen demand, wastewater'),
    ('NH3_N', 'mg/L', 'water', 'ammonia nitrogen'),
    ('PM25', 'ug/m3', 'air', 'PM2.5'),
    ('PM10', 'ug/m3', 'air', 'PM10'),
    ('NO2', 'ug/m3', 'air', 'nitrogen dioxide'),
    ('O3', 'ug/m3', 'air', 'ozone'),
    ('CO', 'mg/m3', 'air', 'carbon monoxide'),
    ('DO', 'mg/L', 'water', 'dissolved oxygen'),
    ('CODMn', 'mg/L', 'water', 'permanganate index'),
    ('TP', 'mg/L', 'water', 'total phosphorus'),
    ('pH', NULL, 'water', 'pH'),
    ('temp', 'degC', 'water', 'water temperature'),
    ('Ua', 'V', 'grid', 'phase A voltage'),
    ('Ub', 'V', 'grid', 'phase B voltage'),
    ('Uc', 'V', 'grid', 'phase C voltage'),
    ('Ia', 'A', 'grid', 'phase A current'),
    ('Ib', 'A', 'grid', 'phase B current'),
    ('Ic', 'A', 'grid', 'phase C current'),
    ('P', 'kW', 'grid', 'active power'),
    ('PF', NULL, 'grid', 'power factor'),
    ('freq', 'Hz', 'grid', 'frequency'),
    ('elec_kwh', 'kWh', 'meter', 'electricity register'),
    ('water_m3', 'm3', 'meter', 'water register'),
    ('gas_m3', 'm3', 'meter', 'gas register'),
    ('heat_kwh', 'kWh', 'meter', 'heat register');
