-- Live pass rates per product, kept by the stream processor's monitor.

CREATE TABLE pass_rates (
    product        text PRIMARY KEY,
    qualified      integer NOT NULL,
    unqualified    integer NOT NULL,
    updated_at     timestamptz NOT NULL
);
