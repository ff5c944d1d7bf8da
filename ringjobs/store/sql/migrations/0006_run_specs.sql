-- Each distinct spec that runs were made from, stored once. A run row kept its job's
-- whole spec (904 of about 1,300 bytes a run on the 1M-run benchmark), and a prune of
-- 100,000 runs freed, moved and checkpointed all of those copies.
-- hash: sha256 of spec, hex (sha256_hex: a function the store gives its connection).
-- The unique index holds the hash, not a second copy of the spec.
-- uses: how many runs have the spec; a prune deletes it when none has. (An index on
-- runs.spec_id to find its users made a prune of 100,000 runs write half as much again:
-- the oldest runs' entries are spread over every spec's range.)
CREATE TABLE run_specs (
    id   INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0
);
INSERT INTO run_specs (hash, spec, uses)
SELECT sha256_hex(spec), spec, count(*) FROM runs GROUP BY spec;

-- runs is rebuilt without the copies: ALTER TABLE DROP COLUMN rewrites each row where
-- it is, and would leave the table's pages two-thirds empty.
CREATE TABLE runs_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace        TEXT NOT NULL,
    job              TEXT NOT NULL,
    revision         INTEGER NOT NULL,
    trigger          TEXT NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    message          TEXT,
    exit_code        INTEGER,
    oom_killed       INTEGER NOT NULL DEFAULT 0,
    stop_intent      TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    image            TEXT,
    image_id         TEXT,
    container_id     TEXT,
    command          TEXT,
    log_bytes        INTEGER NOT NULL DEFAULT 0,
    log_truncated    INTEGER NOT NULL DEFAULT 0,
    caller_uid       INTEGER,
    parent_id        INTEGER,
    completion_index INTEGER,
    spec_id          INTEGER NOT NULL
);
INSERT INTO runs_new
SELECT id, namespace, job, revision, trigger, status, reason, message, exit_code,
       oom_killed, stop_intent, attempt, created_at, started_at, finished_at, image,
       image_id, container_id, command, log_bytes, log_truncated, caller_uid, parent_id,
       completion_index,
       (SELECT run_specs.id FROM run_specs WHERE run_specs.hash = sha256_hex(runs.spec))
FROM runs ORDER BY id;
-- The highest id ever handed out (a pruned run's too) goes with the table: ids are
-- never reused.
DELETE FROM sqlite_sequence WHERE name = 'runs_new';
UPDATE sqlite_sequence SET name = 'runs_new' WHERE name = 'runs';
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_namespace ON runs (namespace, id);
CREATE INDEX runs_by_job ON runs (namespace, job, id);
CREATE INDEX runs_by_status ON runs (status, id);
CREATE INDEX runs_by_finished ON runs (namespace, finished_at);
CREATE UNIQUE INDEX runs_by_parent ON runs (parent_id, completion_index)
    WHERE parent_id IS NOT NULL;
-- A run as the store reads it: its row and its spec (one join, not one per query).
CREATE VIEW runs_with_spec AS
SELECT runs.*, run_specs.spec FROM runs JOIN run_specs ON run_specs.id = runs.spec_id;
