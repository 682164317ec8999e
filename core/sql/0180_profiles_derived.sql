-- Derived tables of the shipped profiles (issue 19; jobs in ingest/jobs/{charging,coldchain,energy}.py,
-- computations in core/profiles/). Plain tables: a row per charger-day, trip, enterprise-day, anomaly.

-- Share of each China day a charger spent charging (state = 1); a state reading holds until the next one,
-- at most settings.profiles.charger_max_hold_s (beyond it the charger is offline, not in its last state).
-- Station and district are the device's attrs when the day was computed (default: device id, region).
CREATE TABLE charger_utilisation_daily (
    device       integer NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    day          date NOT NULL,                 -- China day
    station      text NOT NULL,
    district     text NOT NULL,
    period_s     double precision NOT NULL,     -- seconds of the day computed so far (86 400 once over)
    charging_s   double precision NOT NULL,
    idle_s       double precision NOT NULL,
    fault_s      double precision NOT NULL,
    reserved_s   double precision NOT NULL,
    offline_s    double precision NOT NULL,     -- no state reading vouching for the time
    utilisation  double precision NOT NULL,     -- charging_s / period_s
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, day)
);
CREATE INDEX charger_utilisation_daily_day ON charger_utilisation_daily (day);

-- One cold-chain trip (waybill: trip = 1 from dispatch to delivery sign-off) and its compliance: the share
-- of its time inside [low_c, high_c]; time without a temperature reading is no_data_s, never compliant.
CREATE TABLE coldchain_trips (
    device          integer NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    open            boolean NOT NULL,            -- still in transit (end_time: latest reading so far)
    low_c           double precision NOT NULL,
    high_c          double precision NOT NULL,
    duration_s      double precision NOT NULL,
    in_range_s      double precision NOT NULL,
    out_of_range_s  double precision NOT NULL,
    no_data_s       double precision NOT NULL,
    compliance      double precision,            -- in_range_s / duration_s (NULL: zero-length trip)
    max_temp        double precision,
    min_temp        double precision,
    readings        integer NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, start_time)
);
CREATE INDEX coldchain_trips_start ON coldchain_trips (start_time);

-- Energy per enterprise and China day by carrier, and in tonnes of standard coal (GB/T 2589-2020,
-- core/profiles/standard_coal.py). Enterprise: the meter's attrs.enterprise (default: its device id).
CREATE TABLE energy_daily (
    region           text NOT NULL,
    enterprise       text NOT NULL,
    day              date NOT NULL,
    meters           integer NOT NULL,
    electricity_kwh  double precision NOT NULL,
    gas_m3           double precision NOT NULL,
    steam_t          double precision NOT NULL,
    water_t          double precision NOT NULL,
    tce              double precision NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, enterprise, day)
);
CREATE INDEX energy_daily_day ON energy_daily (day);

-- Consecutive hours of electricity use above the enterprise's own hour-of-week baseline
-- (core/profiles/baseline.py).
CREATE TABLE energy_anomalies (
    region           text NOT NULL,
    enterprise       text NOT NULL,
    start_time       timestamptz NOT NULL,       -- first high hour
    end_time         timestamptz NOT NULL,       -- end of the last high hour
    open             boolean NOT NULL,           -- the latest computed hour is still high
    hours            integer NOT NULL,
    consumption_kwh  double precision NOT NULL,  -- over the run
    baseline_kwh     double precision NOT NULL,  -- the baseline medians over the run
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, enterprise, start_time)
);
