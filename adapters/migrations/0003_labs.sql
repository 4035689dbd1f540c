-- The lab registry and the labs' API keys (only a hash of each key is kept).

CREATE TABLE labs (
    lab_id          text PRIMARY KEY,
    name            text NOT NULL,
    scope           jsonb NOT NULL,
    daily_capacity  integer NOT NULL,
    contact         text,
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE lab_keys (
    prefix          text PRIMARY KEY,
    lab_id          text NOT NULL REFERENCES labs (lab_id),
    key_hash        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
CREATE INDEX lab_keys_lab_idx ON lab_keys (lab_id);

CREATE INDEX tasks_lab_idx ON tasks (lab_id);
