-- Traffic online (issue 5): the road graph, fitted forecasters, forecasts every 5 minutes, incidents.
-- A segment is a traffic detector in the registry (devices.stream = 'traffic'); its id is devices.id.

-- Road graph between segments, registered by whoever knows the roads (the Los-loop replay registers its
-- adjacency). Weights are positive link strengths (the Los-loop Gaussian kernel of road distance);
-- links are directed rows, a symmetric graph is stored both ways.
CREATE TABLE road_links (
    a          integer NOT NULL REFERENCES devices (id),
    b          integer NOT NULL REFERENCES devices (id),
    weight     double precision NOT NULL CHECK (weight > 0),
    source     text NOT NULL DEFAULT 'manual',    -- where the link came from ('los-loop', 'manual', ...)
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (a, b),
    CHECK (a <> b)
);
CREATE INDEX road_links_b ON road_links (b);

-- One fitted forecaster per region and refit (newest row is the live one). The model bytes are
-- core.traffic.forecaster.TrafficForecaster.to_bytes(); column k of the model is segments[k].
-- The incident detector's state (bands and open runs) is saved with the model on every run so a
-- restarted job resumes open incidents.
CREATE TABLE traffic_models (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    region           text NOT NULL,
    fitted_at        timestamptz NOT NULL DEFAULT now(),
    data_from        timestamptz NOT NULL,          -- first 5-minute bin of the training grid
    data_to          timestamptz NOT NULL,          -- last bin of the training grid
    step_s           integer NOT NULL,
    segments         integer[] NOT NULL,            -- devices.id in model column order
    adjacency_source text NOT NULL,                 -- 'road_links' or 'none' (segments fitted alone)
    speed_model      bytea NOT NULL,
    flow_model       bytea,                         -- NULL when no segment reported flow
    bands            double precision[] NOT NULL,   -- incident band per segment (km/h below the forecast)
    detector         bytea,                         -- IncidentDetector state (npz of plain arrays)
    detector_upto    timestamptz,                   -- last bin fed to the detector
    fit_seconds      double precision,
    stats            jsonb
);
CREATE INDEX traffic_models_region ON traffic_models (region, id DESC);

-- Forecasts: issued at the (label of the) last observed 5-minute bin, for horizon_steps bins ahead.
-- Partitioned by issue time: "latest forecast of a segment at a horizon" and "the forecast of bin t made
-- h steps earlier" are both one probe of the unique index, which also makes re-runs idempotent.
CREATE TABLE traffic_forecasts (
    issued_at     timestamptz NOT NULL,
    time          timestamptz NOT NULL,             -- target bin: issued_at + horizon_steps x step
    device        integer NOT NULL,
    horizon_steps smallint NOT NULL CHECK (horizon_steps > 0),
    horizon_min   smallint NOT NULL,
    speed_kmh     real NOT NULL,
    flow_vph      real,
    model_id      bigint NOT NULL
);
SELECT create_hypertable('traffic_forecasts', 'issued_at', chunk_time_interval => interval '1 day',
                         create_default_indexes => false);
CREATE UNIQUE INDEX traffic_forecasts_device_horizon_issued ON traffic_forecasts (device, horizon_steps, issued_at DESC);
CREATE INDEX traffic_forecasts_issued ON traffic_forecasts (issued_at DESC);

-- Incidents: an observed speed far below the forecast made horizon steps earlier for at least two
-- intervals. At most one open incident per segment; an alert (system rule TRAFFIC_INCIDENT_RULE_ID)
-- follows it.
CREATE TABLE traffic_incidents (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device          integer NOT NULL REFERENCES devices (id),
    region          text NOT NULL,
    state           text NOT NULL CHECK (state IN ('open', 'cleared')),
    started_at      timestamptz NOT NULL,           -- first low interval of the run that raised it
    detected_at     timestamptz NOT NULL,           -- interval at which it was raised
    ended_at        timestamptz,                    -- interval at which it cleared
    expected_kmh    real,                           -- forecast speed when it was raised
    observed_kmh    real,                           -- observed speed when it was raised
    min_speed_kmh   real,                           -- lowest observed speed while open
    min_residual    real NOT NULL,                  -- most negative observed - forecast while open (km/h)
    band_kmh        real,                           -- the segment's band at detection
    model_id        bigint,
    alert_id        bigint,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX traffic_incidents_device_detected ON traffic_incidents (device, detected_at);
CREATE UNIQUE INDEX traffic_incidents_one_open ON traffic_incidents (device) WHERE state = 'open';
CREATE INDEX traffic_incidents_region_detected ON traffic_incidents (region, detected_at DESC);

INSERT INTO retention_policies (hypertable, keep) VALUES ('traffic_forecasts', interval '90 days')
ON CONFLICT (hypertable) DO NOTHING;
