-- Notifications (issue 17): channels and routes as data, a transactional outbox written in the alert
-- transition's own transaction (ingest.alert_store), escalation of unacknowledged alerts.

-- Escalations are recorded in the alert's history.
ALTER TABLE alert_events DROP CONSTRAINT IF EXISTS alert_events_event_check;
ALTER TABLE alert_events ADD CONSTRAINT alert_events_event_check
    CHECK (event IN ('raised', 'updated', 'acknowledged', 'cleared', 'closed', 'escalated'));
-- SSE replay reads events newer than a Last-Event-ID within a time window.
CREATE INDEX IF NOT EXISTS alert_events_time ON alert_events (time);

-- Where notifications go. Quiet hours are China wall-clock times (start > end wraps midnight); during
-- them only 'critical' notifications are sent, the others wait for the end. rate_per_window: at most
-- this many sends per notify.rate_window_s (0: no limit).
CREATE TABLE notify_channels (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('webhook', 'wecom', 'dingtalk', 'feishu')),
    url             text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    quiet_start     time,
    quiet_end       time,
    rate_per_window integer NOT NULL DEFAULT 0 CHECK (rate_per_window >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

-- Signing keys (webhook HMAC, DingTalk/Feishu sign secret, WeCom robot key): like device secrets, in a
-- table of their own that no API route returns and the Grafana role is never granted.
CREATE TABLE notify_channel_secrets (
    channel    integer PRIMARY KEY REFERENCES notify_channels (id) ON DELETE CASCADE,
    secret     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Which alert events go to which channels. Empty filter arrays match everything. channels is the
-- escalation chain: channels[1] at once; when escalate_after_s is set and the alert's severity is in
-- escalate_severities, each further channel after another escalate_after_s unacknowledged.
CREATE TABLE notify_routes (
    id                  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text NOT NULL,
    enabled             boolean NOT NULL DEFAULT true,
    regions             text[] NOT NULL DEFAULT '{}',
    streams             text[] NOT NULL DEFAULT '{}',
    severities          text[] NOT NULL DEFAULT '{}',
    rule_ids            bigint[] NOT NULL DEFAULT '{}',
    events              text[] NOT NULL DEFAULT '{raised}',
    channels            integer[] NOT NULL CHECK (cardinality(channels) >= 1),
    escalate_after_s    double precision CHECK (escalate_after_s > 0),
    escalate_severities text[] NOT NULL DEFAULT '{major,critical}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The outbox. A row is written with the alert event that causes it; the sender claims due rows
-- (attempts + 1, next_attempt_at pushed by a lease, so a killed sender's rows come due again), delivers
-- at least once with the idempotency key, and ends in 'delivered' or, after notify.max_attempts,
-- 'failed' with its last error (retryable through the API).
CREATE TABLE notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    alert_id        bigint REFERENCES alerts (id),
    alert_event_id  bigint REFERENCES alert_events (id),
    route_id        integer,
    channel_id      integer NOT NULL REFERENCES notify_channels (id) ON DELETE CASCADE,
    step            integer NOT NULL DEFAULT 0,         -- escalation step (0: first channel)
    severity        text NOT NULL,
    payload         jsonb NOT NULL,                     -- ingest.alert_store.event_payload (+ escalation)
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_due ON notifications (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX notifications_state_id ON notifications (state, id DESC);
CREATE INDEX notifications_channel_sent ON notifications (channel_id, last_attempt_at);

-- Pending escalations: one per (alert, route) while the alert is active and a next channel remains.
CREATE TABLE alert_escalations (
    alert_id  bigint NOT NULL REFERENCES alerts (id),
    route_id  integer NOT NULL REFERENCES notify_routes (id) ON DELETE CASCADE,
    next_step integer NOT NULL,
    due_at    timestamptz NOT NULL,
    PRIMARY KEY (alert_id, route_id)
);
CREATE INDEX alert_escalations_due ON alert_escalations (due_at);
