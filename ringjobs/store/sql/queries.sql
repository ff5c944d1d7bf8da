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

-- name: insert_run
INSERT INTO runs (namespace, job, revision, trigger, status, created_at, image, command,
                  caller_uid, spec)
VALUES (:namespace, :job, :revision, :trigger, 'pending', :now, :image, :command,
        :caller_uid, :spec);

-- name: get_run
SELECT * FROM runs WHERE id = :id;

-- name: active_runs
SELECT * FROM runs WHERE status IN ('pending', 'starting', 'running') ORDER BY id;

-- name: active_runs_of_job
-- Completions of a fan-out run are not counted: their parent stands for them.
SELECT id FROM runs WHERE namespace = :namespace AND job = :job
    AND status IN ('pending', 'starting', 'running') AND parent_id IS NULL ORDER BY id;

-- name: last_run_of_job
SELECT * FROM runs WHERE namespace = :namespace AND job = :job AND parent_id IS NULL
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

-- name: tail_logs
SELECT seq, attempt, stream, time, line FROM (
    SELECT seq, attempt, stream, time, line FROM log_lines
    WHERE run_id = :run_id AND time >= :since AND (:stream IS NULL OR stream = :stream)
    ORDER BY seq DESC LIMIT :tail
) ORDER BY seq;

-- name: prunable_runs
SELECT id, container_id, status FROM runs
WHERE namespace = :namespace
  AND (:all OR status IN ('completed', 'failed', 'cancelled'))
  AND (:older_than IS NULL OR coalesce(finished_at, created_at) < :older_than)
ORDER BY id;

-- name: insert_child_run
INSERT INTO runs (namespace, job, revision, trigger, status, created_at, image, command,
                  caller_uid, spec, parent_id, completion_index)
VALUES (:namespace, :job, :revision, :trigger, 'pending', :now, :image, :command,
        :caller_uid, :spec, :parent_id, :completion_index)
ON CONFLICT (parent_id, completion_index) WHERE parent_id IS NOT NULL DO NOTHING;

-- name: child_runs
SELECT * FROM runs WHERE parent_id = :parent_id ORDER BY completion_index;

-- name: child_run_id
SELECT id FROM runs WHERE parent_id = :parent_id AND completion_index = :completion_index;

-- name: run_status
SELECT status FROM runs WHERE id = :id;
