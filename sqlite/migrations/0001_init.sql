-- Berth metadata schema, version 1.
--
-- Times are TEXT in UTC, fixed width with microseconds
-- ("2006-01-02T15:04:05.000000Z"), so that comparing and ordering the text
-- is comparing and ordering the instants. JSON documents are TEXT so they
-- come back byte for byte. Booleans are INTEGER 0/1.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    access_key    TEXT NOT NULL UNIQUE,
    secret_hash   TEXT NOT NULL,
    is_super_user INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);

-- lock_op_id/lock_until are the per-agent operation guard: the running
-- operation that holds it and when its lease ends.
CREATE TABLE agents (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    owner_id          TEXT NOT NULL REFERENCES users (id),
    description       TEXT NOT NULL,
    card              TEXT,
    active_version_id TEXT REFERENCES versions (id) DEFERRABLE INITIALLY DEFERRED,
    lock_op_id        TEXT,
    lock_until        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE INDEX agents_owner_name ON agents (owner_id, name);

-- major/minor/patch are parsed from the label so that ordering is by semver
-- ("1.10.0" after "1.9.0"), served by versions_semver.
CREATE TABLE versions (
    id            TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version       TEXT NOT NULL,
    major         INTEGER NOT NULL,
    minor         INTEGER NOT NULL,
    patch         INTEGER NOT NULL,
    state         TEXT NOT NULL,
    config        TEXT NOT NULL,
    card          TEXT,
    digest        TEXT NOT NULL,
    build_id      TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    activated_at  TEXT,
    rollback_info TEXT,
    UNIQUE (agent_id, version)
);

CREATE UNIQUE INDEX versions_semver ON versions (agent_id, major, minor, patch);
CREATE INDEX versions_recently_active ON versions (agent_id, state, activated_at);

CREATE TABLE builds (
    id            TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version_id    TEXT NOT NULL,
    version       TEXT NOT NULL,
    status        TEXT NOT NULL,
    logs          TEXT NOT NULL,
    error_message TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    finished_at   TEXT
);

CREATE INDEX builds_agent_created ON builds (agent_id, created_at, id);

CREATE TABLE deployments (
    id            TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version_id    TEXT NOT NULL,
    version       TEXT NOT NULL,
    build_id      TEXT NOT NULL,
    status        TEXT NOT NULL,
    url           TEXT NOT NULL,
    error_message TEXT NOT NULL,
    restarts      INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    stop_at       TEXT,
    removed_at    TEXT
);

CREATE INDEX deployments_agent_created ON deployments (agent_id, created_at, id);
CREATE INDEX deployments_live ON deployments (created_at, id) WHERE status IN ('starting', 'running');
-- What a lifecycle decision reads: live deployments and failed ones not yet
-- cleaned up. Partial, so rollback cost does not grow with history.
CREATE INDEX deployments_current ON deployments (agent_id)
    WHERE status IN ('starting', 'running') OR (status = 'failed' AND removed_at IS NULL);
CREATE INDEX deployments_version ON deployments (version_id);

-- idempotency_key is NULL when the operation has none or once
-- DeleteIdempotencyKeysBefore forgot it.
CREATE TABLE operations (
    id              TEXT PRIMARY KEY,
    agent_id        TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,
    actor           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    from_version    TEXT NOT NULL,
    to_version      TEXT NOT NULL,
    error_code      TEXT NOT NULL,
    error_message   TEXT NOT NULL,
    idempotency_key TEXT,
    result          TEXT,
    result_status   INTEGER NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    duration_ms     INTEGER NOT NULL
);

CREATE INDEX operations_agent_started ON operations (agent_id, started_at, id);
CREATE INDEX operations_idempotency ON operations (agent_id, idempotency_key, started_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX operations_idempotency_started ON operations (started_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX operations_running ON operations (started_at, id) WHERE status = 'running';
