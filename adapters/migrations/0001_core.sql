-- Tasks, lab results, verdicts, dead letters and worker heartbeats.

CREATE SEQUENCE task_number_seq;

CREATE TABLE tasks (
    task_id        text PRIMARY KEY,
    sample_id      text NOT NULL UNIQUE,
    enterprise_id  text NOT NULL,
    product        text NOT NULL,
    spec           text NOT NULL,
    items          text[] NOT NULL,
    lab_id         text NOT NULL,
    kind           text NOT NULL,
    campaign_id    text,
    created_at     timestamptz NOT NULL,
    sampled_at     timestamptz,
    payload        jsonb NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_enterprise_idx ON tasks (enterprise_id);
CREATE INDEX tasks_created_idx ON tasks (created_at);

-- state: accepted (part of the sample), pending (its task not seen yet), rejected (grace ran out)
CREATE TABLE lab_results (
    seq            bigserial,
    result_id      text PRIMARY KEY,
    task_id        text NOT NULL,
    lab_id         text NOT NULL,
    item           text NOT NULL,
    value          text NOT NULL,
    unit           text,
    amends         text,
    state          text NOT NULL CHECK (state IN ('accepted', 'pending', 'rejected')),
    payload        json NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lab_results_task_idx ON lab_results (task_id, seq);
CREATE INDEX lab_results_pending_idx ON lab_results (received_at) WHERE state = 'pending';

CREATE TABLE verdicts (
    verdict_id     text PRIMARY KEY,
    task_id        text NOT NULL,
    version        integer NOT NULL,
    supersedes     text,
    outcome        text NOT NULL,
    spec           text NOT NULL,
    enterprise_id  text NOT NULL,
    product        text NOT NULL,
    lab_id         text NOT NULL,
    decided_at     timestamptz NOT NULL,
    payload        jsonb NOT NULL,
    UNIQUE (task_id, version)
);
CREATE INDEX verdicts_decided_idx ON verdicts (decided_at);
CREATE INDEX verdicts_product_idx ON verdicts (product, decided_at);
CREATE INDEX verdicts_enterprise_idx ON verdicts (enterprise_id, decided_at);

CREATE TABLE dead_letters (
    letter_id      text PRIMARY KEY,
    source         text NOT NULL,
    key            text,
    reason         text NOT NULL,
    payload        text NOT NULL,
    rejected_at    timestamptz NOT NULL
);
CREATE INDEX dead_letters_rejected_idx ON dead_letters (rejected_at);

CREATE TABLE heartbeats (
    component      text NOT NULL,
    instance       text NOT NULL,
    seen_at        timestamptz NOT NULL,
    PRIMARY KEY (component, instance)
);
