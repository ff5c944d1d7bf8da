-- The schema the code expects: the result of every migration in order (checked by a test).
-- Facts about this database, e.g. the instance id its containers are labelled with.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE namespaces (
    name        TEXT PRIMARY KEY,
    environment TEXT NOT NULL DEFAULT '{}',
    network     TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE jobs (
    namespace  TEXT NOT NULL REFERENCES namespaces (name),
    name       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    spec       TEXT NOT NULL,
    spec_hash  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Every revision ever applied; survives job deletion so revision numbers never repeat.
CREATE TABLE job_revisions (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    spec_hash  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name, revision)
);

-- Each distinct spec that runs were made from, once (0006). hash: sha256 of spec, hex.
-- uses: how many runs have it (a prune deletes it at 0).
CREATE TABLE run_specs (
    id   INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0
);

-- AUTOINCREMENT: a pruned run's id is never handed out again.
-- "runs", quoted: 0006 built this table as runs_new and renamed it (SQLite quotes the name).
CREATE TABLE "runs" (
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
CREATE INDEX runs_by_namespace ON runs (namespace, id);
CREATE INDEX runs_by_job ON runs (namespace, job, id);
CREATE INDEX runs_by_status ON runs (status, id);
CREATE INDEX runs_by_finished ON runs (namespace, finished_at);
-- parallelism/completions: one child run per completion index of a fan-out run.
CREATE UNIQUE INDEX runs_by_parent ON runs (parent_id, completion_index)
    WHERE parent_id IS NOT NULL;
-- A run as the store reads it: its row and its spec (one join, not one per query).
CREATE VIEW runs_with_spec AS
SELECT runs.*, run_specs.spec FROM runs JOIN run_specs ON run_specs.id = runs.spec_id;

CREATE TABLE run_events (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL,
    time    TEXT NOT NULL,
    type    TEXT NOT NULL,
    message TEXT NOT NULL,
    data    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX run_events_by_run ON run_events (run_id, id);

-- One row a line. stream: 0 system, 1 stdout, 2 stderr. time: microseconds since epoch.
CREATE TABLE log_lines (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stream  INTEGER NOT NULL,
    time    INTEGER NOT NULL,
    line    TEXT NOT NULL
);
CREATE UNIQUE INDEX log_lines_by_run ON log_lines (run_id, seq);

-- Secret values are AES-GCM ciphertext only; key_id says which key sealed them.
CREATE TABLE secrets (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- The running container an attempt borrowed from (SPEC 7). environment maps each
-- variable name to where its value came from; values are never stored.
CREATE TABLE run_sources (
    run_id       INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    selector     TEXT NOT NULL,
    container_id TEXT NOT NULL,
    container    TEXT NOT NULL,
    image_id     TEXT NOT NULL,
    environment  TEXT NOT NULL DEFAULT '{}',
    created_at   TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt)
);

-- A schedule fire the daemon handled: a run started, or skipped (concurrency policy),
-- or missed (the daemon was down past starting_deadline). The key makes one fire start
-- at most one run, even across a restart; a job's newest row is where its next
-- missed-fire window starts. Only each job's newest rows are kept (trimmed on insert).
CREATE TABLE schedule_fires (
    namespace  TEXT NOT NULL,
    job        TEXT NOT NULL,
    fire_at    TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    run_id     INTEGER,
    message    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (namespace, job, fire_at)
);

-- `job suspend|resume`, apart from the manifest's own `suspend` (which is in the spec).
-- changed_at: fires before a resume are never caught up.
CREATE TABLE schedule_state (
    namespace  TEXT NOT NULL,
    job        TEXT NOT NULL,
    suspended  INTEGER NOT NULL,
    changed_at TEXT NOT NULL,
    PRIMARY KEY (namespace, job)
);

-- Who changed what through the socket (caller uid and pid); never pruned.
CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY,
    time       TEXT NOT NULL,
    caller_uid INTEGER,
    caller_pid INTEGER,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    status     INTEGER NOT NULL,
    run_id     INTEGER,
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_by_run ON audit_events (run_id, id);
