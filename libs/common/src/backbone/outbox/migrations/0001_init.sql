-- backbone.outbox 0001: the outbox table, its dead-letter table and the NOTIFY trigger.
--
-- Ordering: rows of one ordering key are published in id order. `enqueue` takes a transaction
-- advisory lock on the key (class 2977, hashtext(key)) before it inserts, so two transactions that
-- write the same key are serialised: the later one draws its id after the earlier one committed,
-- i.e. per key id order = commit order. The identity sequence must keep CACHE 1 (the default) for
-- ids to be monotonic across sessions.
--
-- Partitions: `partition` = hashtext(key) & 63 (64 partitions). Each relay owns a share of them
-- through session advisory locks (class 2978) and claims only from those, so one key is only ever
-- published by one relay at a time.

CREATE TABLE backbone_outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    ordering_key  text        NOT NULL,
    partition     smallint    NOT NULL GENERATED ALWAYS AS ((hashtext(ordering_key) & 63)::smallint) STORED,
    subject       text        NOT NULL,
    msg_id        text        NOT NULL,
    event_id      text        NOT NULL,
    event_source  text        NOT NULL,
    event_type    text        NOT NULL,
    headers       jsonb       NOT NULL,
    payload       bytea       NOT NULL,
    traceparent   text,
    tracestate    text,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    published_at  timestamptz
);

-- The claim path: oldest first over the unpublished rows, filtered on the partitions a relay owns
-- inside the index (no heap visit for other relays' rows). "mark" retention keeps published rows
-- for a while; they drop out of this index.
CREATE INDEX backbone_outbox_claim ON backbone_outbox (id, partition) WHERE published_at IS NULL;
-- Housekeeping of "mark" retention.
CREATE INDEX backbone_outbox_published ON backbone_outbox (published_at) WHERE published_at IS NOT NULL;

-- A queue table churns: every row is inserted once and deleted once. Vacuum it after a fixed
-- number of dead rows instead of a fraction of the (small) table, and without cost throttling,
-- so dead tuples and dead index entries never pile up in front of the claim index scan.
ALTER TABLE backbone_outbox SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0
);

CREATE TABLE backbone_outbox_dead (
    id            bigint      PRIMARY KEY,
    ordering_key  text        NOT NULL,
    subject       text        NOT NULL,
    msg_id        text        NOT NULL,
    event_id      text        NOT NULL,
    event_source  text        NOT NULL,
    event_type    text        NOT NULL,
    headers       jsonb       NOT NULL,
    payload       bytea       NOT NULL,
    traceparent   text,
    tracestate    text,
    created_at    timestamptz NOT NULL,
    attempts      integer     NOT NULL,
    error         text        NOT NULL,
    dead_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One notification per inserting statement; PostgreSQL delivers it at commit (never for a
-- rollback) and folds repeats inside one transaction.
CREATE FUNCTION backbone_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('backbone_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER backbone_outbox_notify
    AFTER INSERT ON backbone_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION backbone_outbox_notify();
