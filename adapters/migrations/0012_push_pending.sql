-- Center push: raw lab results held until their task is known, the results a verdict's delivery
-- waits for, and when the current round of a delivery began (its retry budget counts from there).

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

-- A verdict for a center that takes results is sent after the deliveries of the results it lists
-- are delivered or failed: waits_for holds their delivery ids. One not queued yet (a result still
-- on its way, or held for its task) is waited for up to a patience from when the verdict was queued.
ALTER TABLE deliveries ADD COLUMN waits_for text[] NOT NULL DEFAULT '{}';

-- Whether a delivery still waits: one of the awaited deliveries is pending, or one is not queued
-- yet and the patience (seconds) since queued_at is not over.
CREATE FUNCTION delivery_waits(awaited text[], queued_at timestamptz, patience double precision)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM deliveries r WHERE r.delivery_id = ANY (awaited) AND r.state = 'pending')
        OR (queued_at > now() - make_interval(secs => patience)
            AND (SELECT count(*) FROM deliveries r WHERE r.delivery_id = ANY (awaited)) < cardinality(awaited))
$$;
