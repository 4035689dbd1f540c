-- The audit log: every write through the API (and so through the CLI), accepted or refused: who,
-- what, when, the outcome status, and for changes of labs, keys, centers, directory records, draws
-- and cases what the thing was before and after (never a key, a key's hash or a center's secret).
-- Append-only: a trigger refuses UPDATE and DELETE (and TRUNCATE) of any row.

CREATE TABLE audit_log (
    seq          bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id   text NOT NULL,
    actor_kind   text NOT NULL CHECK (actor_kind IN ('admin', 'lab', 'inspector', 'anonymous')),
    actor_id     text,            -- the lab or the inspector; null for the admin and the anonymous
    named_actor  text,            -- who the admin says acts (X-Spotcheck-Actor / -Changed-By), unverified
    method       text NOT NULL,
    route        text NOT NULL,   -- the route's name, e.g. labs:create
    path         text NOT NULL,
    target_id    text,
    status       integer NOT NULL,
    before       jsonb,
    after        jsonb,
    detail       jsonb,
    remote       text,
    client       text             -- the caller's User-Agent
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_target_idx ON audit_log (target_id) WHERE target_id IS NOT NULL;
CREATE INDEX audit_log_actor_idx ON audit_log (actor_kind, actor_id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is refused', TG_OP;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
