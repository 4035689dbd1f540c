-- Quality-testing centers, the outbox of pushes to them, and every attempt made.

CREATE TABLE centers (
    center_id        text PRIMARY KEY,
    name             text NOT NULL,
    url              text NOT NULL,
    secret           text NOT NULL,  -- kept as is: it signs every push
    filters          jsonb NOT NULL,
    include_results  boolean NOT NULL DEFAULT false,
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    disabled_at      timestamptz
);

-- One row per (center, event). While pending, next_attempt_at is when it is due; a worker that
-- claims it moves next_attempt_at past its lease and sets claim, so no other worker sends it.
CREATE TABLE deliveries (
    seq              bigserial,
    delivery_id      text PRIMARY KEY,
    center_id        text NOT NULL REFERENCES centers (center_id),
    task_id          text NOT NULL,
    event            text NOT NULL CHECK (event IN ('verdict', 'lab-result')),
    event_id         text NOT NULL,
    payload          json NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    round            integer NOT NULL DEFAULT 1,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claim            text,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    failed_at        timestamptz
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_order_idx ON deliveries (center_id, task_id, seq) WHERE state = 'pending';
CREATE INDEX deliveries_center_idx ON deliveries (center_id, state, seq);

CREATE TABLE delivery_attempts (
    attempt_id       text PRIMARY KEY,
    delivery_id      text NOT NULL REFERENCES deliveries (delivery_id),
    center_id        text NOT NULL,
    round            integer NOT NULL,
    attempt          integer NOT NULL,
    outcome          text NOT NULL,
    status           integer,
    error            text,
    duration_ms      double precision NOT NULL,
    attempted_at     timestamptz NOT NULL
);
CREATE INDEX delivery_attempts_delivery_idx ON delivery_attempts (delivery_id, attempted_at);
