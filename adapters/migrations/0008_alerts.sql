-- Overdue alerts from the stream processor (alert/1), one row per (task, kind, due): alert_id.

CREATE TABLE alerts (
    alert_id       text PRIMARY KEY,
    task_id        text NOT NULL,
    kind           text NOT NULL,
    due            timestamptz NOT NULL,
    detected_at    timestamptz NOT NULL,
    enterprise_id  text NOT NULL,
    lab_id         text NOT NULL,
    payload        jsonb NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_detected_idx ON alerts (detected_at);
CREATE INDEX alerts_task_idx ON alerts (task_id);
CREATE INDEX alerts_kind_idx ON alerts (kind, detected_at);
