-- Draws (double-random selections with everything needed to re-run them) and special campaigns.

CREATE SEQUENCE draw_number_seq;

CREATE TABLE draws (
    draw_id          text PRIMARY KEY,
    plan_id          text NOT NULL,
    draw_date        date NOT NULL,
    campaign_id      text,
    seed             text NOT NULL,
    requested_plan   jsonb NOT NULL,   -- the plan as the planner sent it
    plan             jsonb NOT NULL,   -- the plan drawn (with the platform's facts)
    snapshot         jsonb NOT NULL,   -- the directory as it stood
    history          jsonb NOT NULL,   -- enterprise -> inspectors of its last check
    result           jsonb NOT NULL,
    result_digest    text NOT NULL,
    drawn_at         timestamptz NOT NULL,
    drawn_by         text NOT NULL,
    redraw_of        text REFERENCES draws (draw_id),
    redraw_reason    text,
    status           text NOT NULL CHECK (status IN ('published', 'cancelled')),
    cancelled_at     timestamptz,
    cancel_reason    text,
    record           jsonb NOT NULL
);
CREATE INDEX draws_drawn_idx ON draws (drawn_at);
CREATE UNIQUE INDEX draws_campaign_round_idx ON draws (campaign_id, draw_date)
    WHERE campaign_id IS NOT NULL AND status = 'published';
CREATE UNIQUE INDEX draws_redraw_once_idx ON draws (redraw_of) WHERE redraw_of IS NOT NULL;

-- A draw is never edited: only its status may change, once, from published to cancelled.
CREATE FUNCTION draws_immutable() RETURNS trigger AS $$
BEGIN
    IF NEW.seed IS DISTINCT FROM OLD.seed OR NEW.plan IS DISTINCT FROM OLD.plan
       OR NEW.requested_plan IS DISTINCT FROM OLD.requested_plan
       OR NEW.snapshot IS DISTINCT FROM OLD.snapshot OR NEW.history IS DISTINCT FROM OLD.history
       OR NEW.result IS DISTINCT FROM OLD.result OR NEW.result_digest IS DISTINCT FROM OLD.result_digest
       OR NEW.drawn_at IS DISTINCT FROM OLD.drawn_at OR NEW.plan_id IS DISTINCT FROM OLD.plan_id
       OR NEW.draw_date IS DISTINCT FROM OLD.draw_date THEN
        RAISE EXCEPTION 'draw % is published and cannot be edited', OLD.draw_id;
    END IF;
    IF OLD.status = 'cancelled' THEN
        RAISE EXCEPTION 'draw % is cancelled', OLD.draw_id;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER draws_immutable BEFORE UPDATE ON draws FOR EACH ROW EXECUTE FUNCTION draws_immutable();
CREATE FUNCTION draws_kept() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'draw % is published and cannot be deleted', OLD.draw_id;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER draws_kept BEFORE DELETE ON draws FOR EACH ROW EXECUTE FUNCTION draws_kept();

CREATE TABLE campaigns (
    campaign_id      text PRIMARY KEY,
    record           jsonb NOT NULL,
    active           boolean NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tasks_draw_idx ON tasks ((payload->>'draw_id')) WHERE payload->>'draw_id' IS NOT NULL;
