-- The stream processor's state in PostgreSQL, so that its tables can be rebuilt when the broker lost
-- their changelogs (the embedded broker keeps nothing across a restart). Deadlines derive from tasks,
-- custody steps, verdicts and alerts; enforcement cases do not (a case record holds its timers and
-- the inputs it applied), so the case processor writes each enterprise's whole table value here, in
-- the transaction that stores the case events, the tasks and the outgoing messages of one input.

CREATE TABLE stream_case_snapshots (
    enterprise_id  text PRIMARY KEY,
    revision       bigint NOT NULL,                 -- one more with each change of `state`
    state          jsonb NOT NULL,                  -- {"cases": {case_id: Case}, "failures", "pending"}
    open           boolean NOT NULL,                -- open cases or orders waiting: a timer watches it
    applied        text[] NOT NULL DEFAULT '{}',    -- the latest verdict and refusal inputs it took
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stream_case_snapshots_open_idx ON stream_case_snapshots (enterprise_id) WHERE open;

-- what a rebuild feeds the cases again: refusals, and the verdicts that may concern a case
CREATE INDEX custody_steps_refused_idx ON custody_steps (recorded_at) WHERE step = 'refused';
CREATE INDEX verdicts_case_inputs_idx ON verdicts (enterprise_id, decided_at)
    WHERE outcome = 'unqualified' OR version > 1 OR task_id ~ '\.(R|F[0-9])$';
