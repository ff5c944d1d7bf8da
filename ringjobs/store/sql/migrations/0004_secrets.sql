-- ringjobs schema, version 4: encrypted secrets and the live source of each attempt.
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
