-- City-mode alarm engine: the bindings whose pending period, keep-firing period or flatline run start
-- changed since the last snapshot (alarm_engine_state), upserted in the transaction of the batch that
-- changed them (ingest/alarm_service.py). A restart after kill -9 applies the rows newer than the
-- snapshot (seq > the snapshot's) on top of it; saving a snapshot deletes the rows it covers.
-- Keyed by the series' external identity, not the engine's series index (not stable across restarts).
CREATE TABLE alarm_pending_journal (
    name        text NOT NULL,              -- alarm_engine_state.name
    rule_id     bigint NOT NULL,
    device_id   text NOT NULL,
    metric      text NOT NULL,
    device      integer NOT NULL,
    region      text NOT NULL,
    stream      text NOT NULL,
    seq         bigint NOT NULL,            -- the engine's batch number: a later batch's row wins
    count       bigint NOT NULL,            -- core.kernels.alarm_kernels bstate columns
    since_ns    bigint NOT NULL,
    ref_ts_ns   bigint NOT NULL,
    ref_value   double precision NOT NULL,
    seen_ts_ns  bigint NOT NULL,            -- the series' newest accepted reading after that batch
    PRIMARY KEY (name, rule_id, device_id, metric)
);
