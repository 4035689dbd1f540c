-- The transactional outbox: every message the platform owes the broker, written in the transaction
-- that decided it. The relay publishes rows in `seq` order and records where they landed; a row is
-- processed once every consumer group that reads its topic has committed past its offset. Rows a
-- broker lost before they were processed are published again.

CREATE TABLE outbox (
    seq            bigserial PRIMARY KEY,
    topic          text NOT NULL,
    key            bytea,
    value          bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    partition      integer,
    "offset"       bigint,
    processed_at   timestamptz,
    failed_at      timestamptz,
    failure        text
);
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_unprocessed_idx ON outbox (topic, partition, "offset")
    WHERE published_at IS NOT NULL AND processed_at IS NULL;
CREATE INDEX outbox_processed_idx ON outbox (processed_at) WHERE processed_at IS NOT NULL;

-- The relay's marks on the broker: at start it looks for the last one on the relay-epochs topic;
-- a broker without it has lost everything, and what was not processed is published again.
CREATE TABLE relay_epochs (
    epoch          text PRIMARY KEY,
    marked_at      timestamptz NOT NULL DEFAULT now()
);

-- A result received over HTTP or from a file is stored at once as 'received'; the verdict processor
-- makes it 'accepted' (or 'rejected' when the sample refuses it).
ALTER TABLE lab_results DROP CONSTRAINT lab_results_state_check;
ALTER TABLE lab_results ADD CONSTRAINT lab_results_state_check
    CHECK (state IN ('received', 'accepted', 'pending', 'rejected'));
