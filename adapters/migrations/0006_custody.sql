-- The chain of custody: every step taken (idempotent by step_id), the current state of each task,
-- and the inspectors' API tokens (only a hash of each token is kept).

CREATE TABLE custody_steps (
    seq            bigserial,
    step_id        text PRIMARY KEY,
    task_id        text NOT NULL,
    step           text NOT NULL,
    actor          text NOT NULL,
    actor_role     text NOT NULL,
    at             timestamptz NOT NULL,
    payload        jsonb NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX custody_steps_task_idx ON custody_steps (task_id, at, seq);

-- A task with no row here is in its initial state (assigned when created with inspectors).
CREATE TABLE task_states (
    task_id        text PRIMARY KEY,
    state          text NOT NULL,
    assigned       text[] NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_states_assigned_idx ON task_states USING gin (assigned);

CREATE TABLE inspector_tokens (
    prefix         text PRIMARY KEY,
    inspector_id   text NOT NULL,
    token_hash     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    last_used_at   timestamptz
);
CREATE INDEX inspector_tokens_inspector_idx ON inspector_tokens (inspector_id);
