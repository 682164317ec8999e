-- Cluster mode, exactly-once duties (docs/cluster.md "Who runs what").
-- fence: incremented by each worker claiming the partition, in one statement that waits for any
-- transaction of the previous owner still holding the row; every later transaction of the claimer (batch
-- commits, missing-data timer ticks) checks it, so a previous owner that lost the partition cannot commit
-- alert transitions or engine snapshots after the new owner loaded them.
ALTER TABLE cluster_partitions ADD COLUMN fence bigint NOT NULL DEFAULT 0;

-- Alert events (ingest.alert_store.event_payload JSON) produced by a partition's alarm engine, written in
-- the transaction of their transition and published to MQTT ({prefix}/{region}/alerts/{stream}/{device})
-- by the partition's owner after the commit; a row is deleted once the broker acknowledged it (PUBACK).
-- A worker taking the partition over publishes what its previous owner left. In id order per partition,
-- so per device (a device's partition has one owner at a time).
CREATE TABLE alert_publish_outbox (
    id          bigserial PRIMARY KEY,
    partition   integer NOT NULL,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_publish_outbox_partition ON alert_publish_outbox (partition, id);
