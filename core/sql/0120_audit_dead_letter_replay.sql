-- Audit log (issue 18): every write through the API or the CLI (rules, API keys, devices, alert
-- acknowledgements and closes, dead-letter replays) with who, when, what and the object before/after.
-- Append-only: UPDATE, DELETE and TRUNCATE are refused by a trigger, for every role.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time        timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,                 -- API key name, or the CLI's OS user
    key_id      text,                          -- the API key's public id (API writes)
    source      text NOT NULL CHECK (source IN ('api', 'cli', 'system')),
    action      text NOT NULL,                 -- rule.create, key.revoke, alert.ack, device.provision, ...
    object_type text NOT NULL,                 -- rule | api_key | device | alert | dead_letter
    object_id   text,
    region      text,
    before      jsonb,
    after       jsonb
);
CREATE INDEX audit_log_object ON audit_log (object_type, object_id, id DESC);
CREATE INDEX audit_log_time ON audit_log (time DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Dead letters get an id (to select them for replay) and the outcome of their last replay.
CREATE SEQUENCE dead_letters_id_seq;
ALTER TABLE dead_letters ADD COLUMN id bigint;
UPDATE dead_letters SET id = nextval('dead_letters_id_seq') WHERE id IS NULL;
ALTER TABLE dead_letters ALTER COLUMN id SET DEFAULT nextval('dead_letters_id_seq');
ALTER TABLE dead_letters ALTER COLUMN id SET NOT NULL;
ALTER SEQUENCE dead_letters_id_seq OWNED BY dead_letters.id;
ALTER TABLE dead_letters ADD COLUMN replayed_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN replay_result text;     -- 'ok' or the reason it was refused again
CREATE INDEX dead_letters_id ON dead_letters (id DESC);
CREATE INDEX dead_letters_device_time ON dead_letters (device_id, time DESC);
