-- Enforcement cases: every case event (case-event/1) as published on the actions topic, and each
-- case as its latest event left it (written by the store sink; the stream processor is the authority).

CREATE TABLE case_events (
    event_id        text PRIMARY KEY,
    case_id         text NOT NULL,
    seq             integer NOT NULL,
    enterprise_id   text NOT NULL,
    kind            text NOT NULL,
    state           text NOT NULL,
    at              timestamptz NOT NULL,
    deadline        timestamptz,
    related_task_id text,
    payload         jsonb NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (case_id, seq)
);
CREATE INDEX case_events_enterprise_idx ON case_events (enterprise_id, kind, at);

CREATE TABLE cases (
    case_id         text PRIMARY KEY,
    enterprise_id   text NOT NULL,
    task_id         text NOT NULL,
    product         text NOT NULL,
    spec            text NOT NULL,
    state           text NOT NULL,
    last_seq        integer NOT NULL,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    failing_items   text[] NOT NULL DEFAULT '{}',
    objection_due   timestamptz,
    final_at        timestamptz,
    final_outcome   text,
    publish_by      timestamptz,
    referred        boolean NOT NULL DEFAULT false
);
CREATE INDEX cases_enterprise_idx ON cases (enterprise_id);
CREATE INDEX cases_state_idx ON cases (state);
CREATE INDEX cases_final_idx ON cases (final_at) WHERE final_at IS NOT NULL;
