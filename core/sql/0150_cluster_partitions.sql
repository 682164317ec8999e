-- Cluster mode (wulian router/worker): per JetStream partition, the last stream sequence whose effect
-- is committed. A worker writes it in the same transaction as the partition's rows, alert transitions
-- and alarm-engine snapshot (alarm_engine_state row 'partition/<n>'), so a worker taking the partition
-- over skips exactly what is already stored. The update is a compare-and-set on last_seq: a worker that
-- lost the partition (its lock session ended) cannot commit over the new owner.
CREATE TABLE cluster_partitions (
    partition   integer PRIMARY KEY,
    last_seq    bigint NOT NULL DEFAULT 0,
    messages    bigint NOT NULL DEFAULT 0,   -- messages committed (each stream sequence once)
    duplicates  bigint NOT NULL DEFAULT 0,   -- rows of those messages already present (a double write)
    owner       text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
