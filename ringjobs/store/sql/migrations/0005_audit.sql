-- Who changed what through the socket: one row per mutating request, with the caller's
-- uid and pid (SO_PEERCRED). Kept apart from run_events so a job delete or a prune,
-- which leave no run behind, is still on record; prune never deletes these rows.
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
