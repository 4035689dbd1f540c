-- The directory: enterprises, inspectors and products as they are now, and every version of each
-- record with the time it was valid (who was in the directory on the day of a draw).

CREATE TABLE enterprises (
    enterprise_id   text PRIMARY KEY,
    name            text NOT NULL,
    district        text NOT NULL,
    kind            text NOT NULL,
    record          jsonb NOT NULL,
    version         integer NOT NULL,
    updated_at      timestamptz NOT NULL,
    removed_at      timestamptz
);
CREATE INDEX enterprises_district_idx ON enterprises (district);
CREATE INDEX enterprises_kind_idx ON enterprises (kind);
CREATE INDEX enterprises_record_idx ON enterprises USING gin (record jsonb_path_ops);

CREATE TABLE inspectors (
    inspector_id    text PRIMARY KEY,
    name            text NOT NULL,
    unit            text NOT NULL,
    district        text NOT NULL,
    record          jsonb NOT NULL,
    version         integer NOT NULL,
    updated_at      timestamptz NOT NULL,
    removed_at      timestamptz
);
CREATE INDEX inspectors_district_idx ON inspectors (district);

CREATE TABLE products (
    product         text PRIMARY KEY,
    record          jsonb NOT NULL,
    version         integer NOT NULL,
    updated_at      timestamptz NOT NULL,
    removed_at      timestamptz
);

-- record is NULL for a removal; valid_to is NULL for the version in force.
CREATE TABLE registry_history (
    kind            text NOT NULL CHECK (kind IN ('enterprise', 'inspector', 'product')),
    record_id       text NOT NULL,
    version         integer NOT NULL,
    record          jsonb,
    valid_from      timestamptz NOT NULL,
    valid_to        timestamptz,
    change_id       text NOT NULL UNIQUE,
    changed_by      text NOT NULL,
    reason          text,
    PRIMARY KEY (kind, record_id, version)
);
CREATE INDEX registry_history_time_idx ON registry_history (kind, valid_from);
