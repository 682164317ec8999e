-- Streams as data (issue 19, core/streams.py): a stream's metrics (unit, plausible min/max), the device
-- types it accepts, its default alarm rules and its dashboard. The seven built-in streams are rows too
-- (builtin = true: their own tables and jobs; not editable). Ingest and the API keep the registry in
-- memory and reload it on NOTIFY wulian_streams (core.streams.STREAMS_CHANNEL), so a stream created
-- through /v1/streams or `wulian stream add` works without a restart.
CREATE TABLE streams (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,31}$' AND name <> 'alerts'),
    title         text,
    builtin       boolean NOT NULL DEFAULT false,
    scalar        boolean NOT NULL DEFAULT true,
    metrics       jsonb NOT NULL DEFAULT '{}'::jsonb,   -- {metric: {unit, min, max, description}}
    device_types  text[] NOT NULL DEFAULT '{}',         -- empty: any
    default_rules jsonb NOT NULL DEFAULT '[]'::jsonb,   -- rule definitions, created in `rules` with the stream
    dashboard     jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text
);

INSERT INTO streams (name, builtin, scalar) VALUES
    ('pollution', true, true), ('air', true, true), ('water', true, true), ('grid', true, true),
    ('meter', true, true), ('vehicle', true, false), ('traffic', true, false);

CREATE FUNCTION notify_streams() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wulian_streams', COALESCE(NEW.name, OLD.name));
    RETURN NULL;
END
$$;
CREATE TRIGGER streams_notify AFTER INSERT OR UPDATE OR DELETE ON streams
    FOR EACH ROW EXECUTE FUNCTION notify_streams();
