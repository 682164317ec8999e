-- Storage that lasts (issue 16): native compression and built-in retention policies, where the
-- TimescaleDB edition has them. Both are TimescaleDB Community features (timescaledb.license =
-- 'timescale', the timescale/timescaledb images and Timescale's own packages); the Apache edition
-- (Debian's source build, the local stack) has neither, so there this migration changes nothing and
-- retention stays the scheduled drop_chunks of ingest/retention.py over retention_policies.
--
-- Compressed chunks are segmented by device and ordered by time (the queries read one device's
-- series over a time range); chunks are compressed once older than 7 days (db.compress_after_days,
-- re-applied by ingest at start). Retention: the same intervals as retention_policies.
DO $$
DECLARE
    t text;
    keep_for interval;
BEGIN
    IF coalesce(current_setting('timescaledb.license', true), 'apache') <> 'timescale' THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['readings', 'vehicle_positions', 'traffic_observations'] LOOP
        EXECUTE format('ALTER TABLE %I SET (timescaledb.compress, timescaledb.compress_segmentby = %L,'
                       ' timescaledb.compress_orderby = %L)', t, 'device', 'time DESC');
        PERFORM add_compression_policy(t::regclass, compress_after => interval '7 days', if_not_exists => true);
    END LOOP;
    FOR t, keep_for IN SELECT r.hypertable, r.keep FROM retention_policies r LOOP
        PERFORM add_retention_policy(t::regclass, drop_after => keep_for, if_not_exists => true);
    END LOOP;
END
$$;
