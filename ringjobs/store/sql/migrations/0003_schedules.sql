-- Schedules (issue 5): what the scheduler must remember across restarts.

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
