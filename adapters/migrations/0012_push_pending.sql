-- Center push: when the current round of a delivery began (its retry budget counts from there).

ALTER TABLE deliveries ADD COLUMN round_started_at timestamptz;  -- the round's first attempt
