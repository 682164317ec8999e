-- Device credentials leave devices.attrs. The HJ 212 access password (PW) and the JT/T 808 auth code
-- were attrs keys, so every reader of `devices` (the JSON API, whatever its role; the Grafana read-only
-- role) could read them. They now live in device_secrets, which only the device-secret store
-- (ingest/device_secrets.py: provisioning, the gateways, the CLI, simulators and benches) reads or writes.
-- The MQTT password is not here: the broker's password_file keeps only its PBKDF2 hash.
CREATE TABLE device_secrets (
    device_id  text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE ON UPDATE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('hj212_pw', 'jt808_auth')),
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, kind)
);

-- Never readable by the dashboards (later grants migrations revoke all and grant only what panels read).
REVOKE ALL ON device_secrets FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'wulian_grafana') THEN
        REVOKE ALL ON device_secrets FROM wulian_grafana;
    END IF;
END
$$;

-- Existing secrets move over; the keys leave attrs, and attrs may never hold them again.
INSERT INTO device_secrets (device_id, kind, secret)
SELECT d.device_id, k.kind, d.attrs ->> k.kind
FROM devices d CROSS JOIN (VALUES ('hj212_pw'), ('jt808_auth')) AS k (kind)
WHERE d.attrs ->> k.kind IS NOT NULL;
UPDATE devices SET attrs = attrs - 'hj212_pw' - 'jt808_auth' WHERE attrs ?| ARRAY['hj212_pw', 'jt808_auth'];
ALTER TABLE devices ADD CONSTRAINT devices_attrs_no_secrets CHECK (NOT attrs ?| ARRAY['hj212_pw', 'jt808_auth']);

-- `wulian device remove` keeps the registry row (readings and alerts reference it) but marks it: the
-- gateways refuse a removed device, and auto-provisioning never brings it back (`wulian device add` does).
ALTER TABLE devices ADD COLUMN removed_at timestamptz;

-- Gateways cache device lookups; any change to a device's credentials or its removal is announced on
-- this channel (payload: the device id; core/const.py DEVICE_CREDENTIALS_CHANNEL) so that a cache never
-- keeps a revoked credential alive. A trigger, so that a change made by hand in SQL is announced too.
CREATE FUNCTION notify_device_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wulian_device_credentials', CASE WHEN TG_OP = 'DELETE' THEN OLD.device_id ELSE NEW.device_id END);
    RETURN NULL;
END
$$;
CREATE TRIGGER device_secrets_notify AFTER INSERT OR UPDATE OR DELETE ON device_secrets
    FOR EACH ROW EXECUTE FUNCTION notify_device_credentials();
CREATE TRIGGER devices_removed_notify AFTER UPDATE OF removed_at ON devices
    FOR EACH ROW WHEN (OLD.removed_at IS DISTINCT FROM NEW.removed_at) EXECUTE FUNCTION notify_device_credentials();
CREATE TRIGGER devices_deleted_notify AFTER DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION notify_device_credentials();
