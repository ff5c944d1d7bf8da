-- parallelism/completions: a fan-out run (parent) has one child run per completion index.
-- A child is a whole run of its own (container, attempts, logs, reconciliation).
ALTER TABLE runs ADD COLUMN parent_id INTEGER;
ALTER TABLE runs ADD COLUMN completion_index INTEGER;
CREATE UNIQUE INDEX runs_by_parent ON runs (parent_id, completion_index)
    WHERE parent_id IS NOT NULL;
