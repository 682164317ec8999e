-- Device events: what devices report besides time series, as the codecs decode it (HJ 212 CN 2021/2041
-- equipment state and run time, values that were not numbers; JT/T 808 batch backfill; DL/T 645 and
-- CJ/T 188 frames without a measurement, meter status and errors) and what the JT/T 808 gateway
-- answers itself (registration, authentication, logout). Written only by
-- ingest.batch_writer.write_events.
CREATE TABLE device_events (
    time   timestamptz NOT NULL,     -- the event's own time, else its message's records', else received
    id     bigint GENERATED ALWAYS AS IDENTITY,  -- tie-break of the API's (time, id) cursor
    device integer NOT NULL,         -- devices.id
    region text NOT NULL,            -- the device's, when the event was written
    stream text NOT NULL,
    kind   text NOT NULL,            -- hj212_equipment_state, jt808_register, dlt645, ...
    code   text,                     -- short code when the event has one (answer result, error byte, ST)
    detail jsonb NOT NULL,
    digest uuid NOT NULL             -- md5 of detail: in the key, so redelivery is a no-op
);
SELECT create_hypertable('device_events', 'time', chunk_time_interval => interval '30 days',
                         create_default_indexes => false);
-- One row per (device, time, kind, detail): a redelivered message writes nothing twice. Also the index
-- of the per-device, newest-first API listing.
CREATE UNIQUE INDEX device_events_key ON device_events (device, time DESC, kind, digest);

INSERT INTO retention_policies (hypertable, keep) VALUES ('device_events', interval '400 days')
ON CONFLICT (hypertable) DO NOTHING;
