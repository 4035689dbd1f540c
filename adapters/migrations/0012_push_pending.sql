-- Center push: raw lab results held until their task is known, and when the current round of a
-- delivery began (its retry budget counts from there).

-- A result whose task is not stored yet cannot pass a center's spec or product filter: it is held
-- here, then queued for the centers it matches once the task is stored, or dead-lettered after
-- the grace period. received_at is when the push worker took it.
CREATE TABLE push_pending (
    seq          bigserial,
    result_id    text PRIMARY KEY,
    task_id      text NOT NULL,
    payload      json NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX push_pending_task_idx ON push_pending (task_id, seq);
CREATE INDEX push_pending_received_idx ON push_pending (received_at);

ALTER TABLE deliveries ADD COLUMN round_started_at timestamptz;  -- the round's first attempt
