-- Named queries: each starts with a "-- name: NAME" line. Loaded by ringjobs.store.queries.

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: init_meta
INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING;

-- name: upsert_namespace
INSERT INTO namespaces (name, environment, network, created_at, updated_at)
VALUES (:name, :environment, :network, :now, :now)
ON CONFLICT (name) DO UPDATE SET
    environment = CASE WHEN :replace THEN excluded.environment ELSE environment END,
    network = CASE WHEN :replace THEN excluded.network ELSE network END,
    updated_at = CASE WHEN :replace THEN excluded.updated_at ELSE updated_at END;

-- name: get_namespace
SELECT name, environment, network, created_at, updated_at FROM namespaces WHERE name = :name;

-- name: list_namespaces
SELECT n.name, n.environment, n.network,
       (SELECT count(*) FROM jobs j WHERE j.namespace = n.name) AS jobs,
       (SELECT count(*) FROM runs r WHERE r.namespace = n.name
            AND r.parent_id IS NULL) AS runs,
       (SELECT count(*) FROM runs r WHERE r.namespace = n.name AND r.parent_id IS NULL
            AND r.status IN ('pending', 'starting', 'running')) AS active_runs
FROM namespaces n ORDER BY n.name;

-- name: get_job
SELECT namespace, name, revision, spec, spec_hash, created_at, updated_at
FROM jobs WHERE namespace = :namespace AND name = :name;

-- name: list_jobs
SELECT namespace, name, revision, spec, spec_hash, created_at, updated_at
FROM jobs WHERE (:namespace IS NULL OR namespace = :namespace) ORDER BY namespace, name;

-- name: last_revision
SELECT max(revision) FROM job_revisions WHERE namespace = :namespace AND name = :name;

-- name: upsert_job
INSERT INTO jobs (namespace, name, revision, spec, spec_hash, created_at, updated_at)
VALUES (:namespace, :name, :revision, :spec, :spec_hash, :now, :now)
ON CONFLICT (namespace, name) DO UPDATE SET
    revision = excluded.revision, spec = excluded.spec,
    spec_hash = excluded.spec_hash, updated_at = excluded.updated_at;

-- name: insert_revision
INSERT INTO job_revisions (namespace, name, revision, spec_hash, created_at)
VALUES (:namespace, :name, :revision, :spec_hash, :now);

-- name: delete_job
DELETE FROM jobs WHERE namespace = :namespace AND name = :name;

-- name: insert_run_spec
-- Before insert_run and insert_child_run: a row for the spec, unless a run had it before.
INSERT INTO run_specs (hash, spec) VALUES (:spec_hash, :spec) ON CONFLICT (hash) DO NOTHING;

-- name: use_run_spec
-- After a run was inserted with the spec.
UPDATE run_specs SET uses = uses + 1 WHERE hash = :spec_hash;

-- name: insert_run
INSERT INTO runs (namespace, job, revision, trigger, status, created_at, image, command,
                  caller_uid, spec_id)
VALUES (:namespace, :job, :revision, :trigger, 'pending', :now, :image, :command,
        :caller_uid, (SELECT id FROM run_specs WHERE hash = :spec_hash));

-- name: get_run
SELECT * FROM runs_with_spec WHERE id = :id;

-- name: active_runs
SELECT * FROM runs_with_spec WHERE status IN ('pending', 'starting', 'running') ORDER BY id;

-- name: active_runs_of_job
-- Completions of a fan-out run are not counted: their parent stands for them.
SELECT id FROM runs WHERE namespace = :namespace AND job = :job
    AND status IN ('pending', 'starting', 'running') AND parent_id IS NULL ORDER BY id;

-- name: last_run_of_job
SELECT * FROM runs_with_spec WHERE namespace = :namespace AND job = :job AND parent_id IS NULL
ORDER BY id DESC LIMIT 1;

-- name: insert_event
INSERT INTO run_events (run_id, time, type, message, data)
VALUES (:run_id, :time, :type, :message, :data);

-- name: list_events
SELECT id, run_id, time, type, message, data FROM run_events
WHERE run_id = :run_id AND id > :after ORDER BY id;

-- name: insert_log_line
-- A batch retried after a commit that did happen stores nothing twice; any other
-- constraint still fails loudly.
INSERT INTO log_lines (run_id, seq, attempt, stream, time, line)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, seq) DO NOTHING;

-- name: add_log_bytes
UPDATE runs SET log_bytes = log_bytes + :bytes,
    log_truncated = log_truncated OR :truncated WHERE id = :run_id;

-- name: last_log_seq
SELECT coalesce(max(seq), 0) FROM log_lines WHERE run_id = :run_id;

-- name: count_log_lines
SELECT count(*) FROM log_lines WHERE run_id = :run_id AND attempt = :attempt AND stream = :stream;

-- name: read_logs
SELECT seq, attempt, stream, time, line FROM log_lines
WHERE run_id = :run_id AND seq > :after AND time >= :since
  AND (:stream IS NULL OR stream = :stream)
ORDER BY seq LIMIT :limit;

-- name: read_logs_ndjson
-- read_logs as the API's NDJSON lines (LogRecord.to_api, with "completion" when given),
-- built by SQLite on the reading thread: encoding them in Python held the event loop
-- for most of a large read (logs RUN of 256 MiB: about 88 -> 130 MiB/s). json_quote
-- leaves non-ASCII as UTF-8 where json.dumps writes \u escapes: the same JSON values.
-- Times are >= 0 (from the clock), so / and % need no flooring.
SELECT seq, CAST(printf( -- as UTF-8 bytes, sent as they are
    '{"seq": %d, "attempt": %d, "stream": "%s", "time": "%s.%06dZ", "line": %s%s}%s',
    seq, attempt, CASE stream WHEN 1 THEN 'stdout' WHEN 2 THEN 'stderr' ELSE 'system' END,
    strftime('%Y-%m-%dT%H:%M:%S', time / 1000000, 'unixepoch'), time % 1000000,
    json_quote(line), -- copied once into the result: printf, not ||
    CASE WHEN :completion IS NULL THEN '' ELSE ', "completion": ' || :completion END,
    char(10)) AS BLOB)
FROM log_lines
WHERE run_id = :run_id AND seq > :after AND time >= :since
  AND (:stream IS NULL OR stream = :stream)
ORDER BY seq LIMIT :limit;

-- name: read_logs_framed
-- read_logs for log frames (docs/api.md), which LogPageReader.page builds from these
-- columns: each line as bytes, with its time as `ringjobs logs --timestamps` prints it
-- when :timestamps. Joining in SQLite copied each 4 KiB line about five times (||): a
-- page of 256 such lines came at 410-425 MiB/s here, 520-570 built in Python.
SELECT seq, stream, CASE WHEN :timestamps THEN CAST(
        strftime('%Y-%m-%dT%H:%M:%S', time / 1000000, 'unixepoch')
        || printf('.%06dZ ', time % 1000000) AS BLOB) END,
    CAST(line AS BLOB)
FROM log_lines
WHERE run_id = :run_id AND seq > :after AND time >= :since
  AND (:stream IS NULL OR stream = :stream)
ORDER BY seq LIMIT :limit;

-- name: tail_logs
SELECT seq, attempt, stream, time, line FROM (
    SELECT seq, attempt, stream, time, line FROM log_lines
    WHERE run_id = :run_id AND time >= :since AND (:stream IS NULL OR stream = :stream)
    ORDER BY seq DESC LIMIT :tail
) ORDER BY seq;

-- name: prunable_runs
-- keep_last: each job's newest runs among those of the asked statuses are kept.
-- Completions (parent_id set) are not counted: they go with their parent.
-- Rows of two JSON arrays (the ids, and those of them still active), one row per
-- :block of ids (ringjobs/idlists.py), in no set order: the whole scan runs in one
-- step with the GIL released, where 100,000 rows would be 100,000 Python objects built
-- on a thread competing with the event loop. No row when no run is found.
SELECT json_group_array(id) AS run_ids,
       json_group_array(id) FILTER (WHERE status NOT IN ('completed', 'failed', 'cancelled'))
           AS active
FROM (
    SELECT id, status, finished_at, created_at,
           row_number() OVER (PARTITION BY job ORDER BY id DESC) AS newest
    FROM runs
    WHERE namespace = :namespace AND parent_id IS NULL
      AND (:all OR status IN ('completed', 'failed', 'cancelled'))
      AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
)
WHERE newest > :keep_last
  AND (:older_than IS NULL OR coalesce(finished_at, created_at) < :older_than)
GROUP BY id / :block;

-- name: insert_child_run
INSERT INTO runs (namespace, job, revision, trigger, status, created_at, image, command,
                  caller_uid, spec_id, parent_id, completion_index)
VALUES (:namespace, :job, :revision, :trigger, 'pending', :now, :image, :command,
        :caller_uid, (SELECT id FROM run_specs WHERE hash = :spec_hash), :parent_id,
        :completion_index)
ON CONFLICT (parent_id, completion_index) WHERE parent_id IS NOT NULL DO NOTHING;

-- name: child_runs
SELECT * FROM runs_with_spec WHERE parent_id = :parent_id ORDER BY completion_index;

-- name: child_run_id
SELECT id FROM runs WHERE parent_id = :parent_id AND completion_index = :completion_index;

-- name: upsert_secret
INSERT INTO secrets (namespace, name, key_id, nonce, ciphertext, created_at, updated_at)
VALUES (:namespace, :name, :key_id, :nonce, :ciphertext, :now, :now)
ON CONFLICT (namespace, name) DO UPDATE SET
    key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext,
    updated_at = excluded.updated_at;

-- name: get_secret
SELECT namespace, name, key_id, nonce, ciphertext, created_at, updated_at
FROM secrets WHERE namespace = :namespace AND name = :name;

-- name: list_secrets
SELECT namespace, name, key_id, created_at, updated_at FROM secrets
WHERE (:namespace IS NULL OR namespace = :namespace) ORDER BY namespace, name;

-- name: delete_secret
DELETE FROM secrets WHERE namespace = :namespace AND name = :name;

-- name: count_secrets
SELECT namespace, count(*) AS secrets FROM secrets GROUP BY namespace;

-- name: insert_run_source
INSERT INTO run_sources (run_id, attempt, selector, container_id, container, image_id,
                         environment, created_at)
VALUES (:run_id, :attempt, :selector, :container_id, :container, :image_id, :environment, :now)
ON CONFLICT (run_id, attempt) DO UPDATE SET
    selector = excluded.selector, container_id = excluded.container_id,
    container = excluded.container, image_id = excluded.image_id,
    environment = excluded.environment, created_at = excluded.created_at;

-- name: run_sources
SELECT attempt, selector, container_id, container, image_id, environment, created_at
FROM run_sources WHERE run_id = :run_id ORDER BY attempt;

-- Schedules and retention (issue 5) -------------------------------------------------

-- name: claim_fire
-- A fire already handled inserts nothing: the caller then starts no run.
INSERT INTO schedule_fires (namespace, job, fire_at, outcome, run_id, message, created_at)
VALUES (:namespace, :job, :fire_at, :outcome, :run_id, :message, :now)
ON CONFLICT (namespace, job, fire_at) DO NOTHING;

-- name: trim_fires
DELETE FROM schedule_fires WHERE namespace = :namespace AND job = :job AND fire_at < (
    SELECT fire_at FROM schedule_fires WHERE namespace = :namespace AND job = :job
    ORDER BY fire_at DESC LIMIT 1 OFFSET :keep
);

-- name: last_fires
SELECT namespace, job, max(fire_at) AS fire_at FROM schedule_fires GROUP BY namespace, job;

-- name: list_fires
SELECT namespace, job, fire_at, outcome, run_id, message, created_at FROM schedule_fires
WHERE namespace = :namespace AND job = :job ORDER BY fire_at DESC LIMIT :limit;

-- name: schedule_states
SELECT namespace, job, suspended, changed_at FROM schedule_state;

-- name: set_schedule_state
INSERT INTO schedule_state (namespace, job, suspended, changed_at)
VALUES (:namespace, :job, :suspended, :now)
ON CONFLICT (namespace, job) DO UPDATE SET
    suspended = excluded.suspended, changed_at = excluded.changed_at;

-- name: forget_deleted_schedules
-- A job deleted and applied again starts afresh: not suspended, no old fires.
DELETE FROM schedule_state WHERE NOT EXISTS (
    SELECT 1 FROM jobs WHERE jobs.namespace = schedule_state.namespace
        AND jobs.name = schedule_state.job
);

-- name: forget_deleted_fires
DELETE FROM schedule_fires WHERE NOT EXISTS (
    SELECT 1 FROM jobs WHERE jobs.namespace = schedule_fires.namespace
        AND jobs.name = schedule_fires.job
);

-- name: excess_history
-- Finished runs of a job beyond its history_limit: `failed` counts failed and cancelled.
SELECT id FROM (
    SELECT id, status,
           row_number() OVER (PARTITION BY status = 'completed' ORDER BY id DESC) AS newest
    FROM runs
    WHERE namespace = :namespace AND job = :job AND parent_id IS NULL
      AND status IN ('completed', 'failed', 'cancelled')
)
WHERE (status = 'completed' AND :succeeded IS NOT NULL AND newest > :succeeded)
   OR (status <> 'completed' AND :failed IS NOT NULL AND newest > :failed)
ORDER BY id;

-- name: last_scheduled_run
SELECT id, status, created_at FROM runs
WHERE namespace = :namespace AND job = :job AND trigger = 'schedule' AND parent_id IS NULL
ORDER BY id DESC LIMIT 1;

-- name: link_fire
UPDATE schedule_fires SET run_id = :run_id
WHERE namespace = :namespace AND job = :job AND fire_at = :fire_at;

-- name: probe_write
INSERT INTO meta (key, value) VALUES ('last_write_check', :now)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: insert_audit_event
INSERT INTO audit_events (time, caller_uid, caller_pid, action, target, status, run_id, data)
VALUES (:time, :caller_uid, :caller_pid, :action, :target, :status, :run_id, :data);

-- name: set_audit_status
UPDATE audit_events SET status = :status WHERE id = :id;

-- name: list_audit_events
SELECT id, time, caller_uid, caller_pid, action, target, status, run_id, data
FROM audit_events
WHERE (:run_id IS NULL OR run_id = :run_id) AND (:before IS NULL OR id < :before)
ORDER BY id DESC LIMIT :limit;

-- name: tail_start_seq
SELECT coalesce(min(seq), 0) FROM (
    SELECT seq FROM log_lines
    WHERE run_id = :run_id AND time >= :since AND (:stream IS NULL OR stream = :stream)
    ORDER BY seq DESC LIMIT :tail
);

-- name: run_status
SELECT status FROM runs WHERE id = :id;

-- name: prunable_runs_older_than
-- The common case (--older-than, no --keep-last, no --all): a range of the
-- runs_by_finished index instead of ranking every run of the namespace. Every final
-- transition writes finished_at. The same rows as prunable_runs.
SELECT json_group_array(id) AS run_ids, json('[]') AS active FROM runs
WHERE namespace = :namespace
  AND finished_at < :older_than
  AND parent_id IS NULL
  AND status IN ('completed', 'failed', 'cancelled')
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
GROUP BY id / :block;

-- name: child_run_ids
-- The completions of fan-out runs among :ids (a JSON array of at most ID_BLOCK), as one
-- JSON array.
SELECT json_group_array(id) FROM runs WHERE parent_id IN (SELECT value FROM json_each(:ids));

-- Prune. :ids is a JSON array of run ids: one statement text for any number of them.

-- name: more_log_lines_than
-- A row if the runs :ids have more than :limit lines (delete_log_lines then, a bounded
-- statement at a time), none if not (delete_all_log_lines: 20-35% faster).
SELECT 1 FROM log_lines WHERE run_id IN (SELECT value FROM json_each(:ids))
LIMIT 1 OFFSET :limit;

-- name: delete_log_lines
-- At most :limit lines at a time: one run's log can be millions of lines, and a prune
-- transaction must stay short (the writer lock is everyone's).
DELETE FROM log_lines WHERE id IN (
    SELECT id FROM log_lines WHERE run_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit
);

-- name: delete_all_log_lines
DELETE FROM log_lines WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_run_events
DELETE FROM run_events WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_run_sources
DELETE FROM run_sources WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: release_run_specs
-- Before delete_runs: each spec of the runs :ids loses their count from its uses.
-- One statement, not one per spec, nor a RETURNING row per run: each step of a
-- statement gives the GIL back, and under load each takes up to 5 ms to regain it.
UPDATE run_specs SET uses = uses - gone.runs
FROM (
    SELECT spec_id, count(*) AS runs FROM runs
    WHERE id IN (SELECT value FROM json_each(:ids)) GROUP BY spec_id
) AS gone
WHERE run_specs.id = gone.spec_id;

-- name: delete_unused_run_specs
-- After release_run_specs, before delete_runs (which still finds their spec_id).
DELETE FROM run_specs WHERE uses <= 0 AND id IN (
    SELECT spec_id FROM runs WHERE id IN (SELECT value FROM json_each(:ids))
);

-- name: delete_runs
DELETE FROM runs WHERE id IN (SELECT value FROM json_each(:ids));
