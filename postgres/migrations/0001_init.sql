-- Berth metadata schema for PostgreSQL, version 1. It mirrors
-- sqlite/migrations/0001_init.sql; the differences are in the types:
--
-- Times are TIMESTAMPTZ (microsecond precision, like the SQLite encoding).
-- Agent cards, operation results, version configs and rollback records are
-- JSON, not JSONB: JSON validates the document but keeps its text byte for
-- byte (an idempotent replay answers with exactly the body it stored), and
-- nothing queries inside them. Booleans are BOOLEAN; semver parts BIGINT.
-- Text that lists are ordered by (agent names; the IDs that break ties in
-- time order) uses the "C" collation, so that it sorts by its bytes as in
-- SQLite (and in Go), whatever the database's locale, and the indexes
-- serve that order.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    access_key    TEXT NOT NULL UNIQUE,
    secret_hash   TEXT NOT NULL,
    is_super_user BOOLEAN NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

-- lock_op_id/lock_until are the per-agent operation guard: the running
-- operation that holds it and when its lease ends, on the database's clock.
-- active_version_id references versions, which references agents; the
-- constraint is added once versions exists.
CREATE TABLE agents (
    id                TEXT PRIMARY KEY,
    name              TEXT COLLATE "C" NOT NULL UNIQUE,
    owner_id          TEXT NOT NULL REFERENCES users (id),
    description       TEXT NOT NULL,
    card              JSON,
    active_version_id TEXT,
    lock_op_id        TEXT,
    lock_until        TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

CREATE INDEX agents_owner_name ON agents (owner_id, name);
-- Guards whose lease may run out: what InterruptOperations looks at.
CREATE INDEX agents_locked ON agents (lock_until) WHERE lock_op_id IS NOT NULL;

-- major/minor/patch are parsed from the label so that ordering is by semver
-- ("1.10.0" after "1.9.0"), served by versions_semver.
CREATE TABLE versions (
    id            TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version       TEXT NOT NULL,
    major         BIGINT NOT NULL,
    minor         BIGINT NOT NULL,
    patch         BIGINT NOT NULL,
    state         TEXT NOT NULL,
    config        JSON NOT NULL,
    card          JSON,
    digest        TEXT NOT NULL,
    build_id      TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    activated_at  TIMESTAMPTZ,
    rollback_info JSON,
    UNIQUE (agent_id, version)
);

CREATE UNIQUE INDEX versions_semver ON versions (agent_id, major, minor, patch);
CREATE INDEX versions_recently_active ON versions (agent_id, state, activated_at);

-- Deferred like in SQLite: deleting an agent deletes its versions (cascade)
-- and the agent row in one statement, and the check runs at commit.
ALTER TABLE agents ADD CONSTRAINT agents_active_version_fkey
    FOREIGN KEY (active_version_id) REFERENCES versions (id) DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE builds (
    id            TEXT COLLATE "C" PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version_id    TEXT NOT NULL,
    version       TEXT NOT NULL,
    status        TEXT NOT NULL,
    logs          TEXT NOT NULL,
    error_message TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ
);

CREATE INDEX builds_agent_created ON builds (agent_id, created_at, id);

CREATE TABLE deployments (
    id            TEXT COLLATE "C" PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version_id    TEXT NOT NULL,
    version       TEXT NOT NULL,
    build_id      TEXT NOT NULL,
    status        TEXT NOT NULL,
    url           TEXT NOT NULL,
    error_message TEXT NOT NULL,
    restarts      INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    stop_at       TIMESTAMPTZ,
    removed_at    TIMESTAMPTZ
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
    id              TEXT COLLATE "C" PRIMARY KEY,
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
    result          JSON,
    result_status   INTEGER NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ,
    duration_ms     BIGINT NOT NULL
);

CREATE INDEX operations_agent_started ON operations (agent_id, started_at, id);
CREATE INDEX operations_idempotency ON operations (agent_id, idempotency_key, started_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX operations_idempotency_started ON operations (started_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX operations_running ON operations (started_at, id) WHERE status = 'running';
