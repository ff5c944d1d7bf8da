-- Each distinct spec that runs were made from, stored once. A run row kept its job's
-- whole spec (904 of about 1,300 bytes a run on the 1M-run benchmark), and a prune of
-- 100,000 runs freed, moved and checkpointed all of those copies.
CREATE TABLE run_specs (
    id   INTEGER PRIMARY KEY,
    spec TEXT NOT NULL UNIQUE
);
INSERT INTO run_specs (spec) SELECT DISTINCT spec FROM runs;
ALTER TABLE runs ADD COLUMN spec_id INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET spec_id = (SELECT id FROM run_specs WHERE run_specs.spec = runs.spec);
ALTER TABLE runs DROP COLUMN spec;
-- A prune deletes the specs no run uses any more: it finds their users here.
CREATE INDEX runs_by_spec ON runs (spec_id);
-- The copies' pages go back to the file system (the file shrinks at the next checkpoint).
PRAGMA incremental_vacuum;
