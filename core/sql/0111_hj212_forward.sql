-- Upstream forwarding of HJ 212 data (数据转发, issue 17): upstream platforms, the key pollution sources
-- forwarded to each with the upstream's own MN/PW, and a persistent outbox sent in order.

CREATE TABLE forward_upstreams (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    host       text NOT NULL,
    port       integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A station forwarded to an upstream, under the MN the upstream knows it by.
CREATE TABLE forward_stations (
    upstream    integer NOT NULL REFERENCES forward_upstreams (id) ON DELETE CASCADE,
    device_id   text NOT NULL,
    upstream_mn text NOT NULL,
    PRIMARY KEY (upstream, device_id),
    UNIQUE (upstream, upstream_mn)
);

-- The upstream's PW of each station: a secret, in its own table (never granted to Grafana).
CREATE TABLE forward_station_secrets (
    upstream    integer NOT NULL,
    device_id   text NOT NULL,
    upstream_pw text NOT NULL,
    PRIMARY KEY (upstream, device_id),
    FOREIGN KEY (upstream, device_id) REFERENCES forward_stations (upstream, device_id) ON DELETE CASCADE
);

-- The outbox: one row per packet and upstream, already rewritten with the upstream's MN/PW. The unique
-- key (the station's QN, or its DataTime for packets without QN) drops MQTT redeliveries.
CREATE TABLE forward_outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    upstream      integer NOT NULL REFERENCES forward_upstreams (id) ON DELETE CASCADE,
    device_id     text NOT NULL,
    cn            text NOT NULL,
    packet_key    text NOT NULL,
    packet        bytea NOT NULL,
    ack_requested boolean NOT NULL,
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'refused')),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    UNIQUE (upstream, device_id, cn, packet_key)
);
CREATE INDEX forward_outbox_pending ON forward_outbox (upstream, id) WHERE state = 'pending';
