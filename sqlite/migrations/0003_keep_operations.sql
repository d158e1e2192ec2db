-- Operations are the audit trail: they outlive their agent. Deleting an
-- agent no longer deletes its operations (agent_id keeps the deleted
-- agent's ID and no longer references agents), and each operation carries
-- the agent's name, so the trail still says which agent it was.
--
-- SQLite cannot drop a foreign key, so the table is rebuilt: created anew,
-- filled from the old one (agent_name from the agents that exist), the old
-- one dropped and the new one renamed, and every index of operations
-- (0001_init.sql) recreated as it was. Nothing references operations, so
-- dropping it with foreign keys enforced is safe.
CREATE TABLE operations_new (
    id              TEXT PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    agent_name      TEXT NOT NULL DEFAULT '',
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,
    actor           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    from_version    TEXT NOT NULL,
    to_version      TEXT NOT NULL,
    error_code      TEXT NOT NULL,
    error_message   TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash    TEXT NOT NULL DEFAULT '',
    result          TEXT,
    result_status   INTEGER NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    duration_ms     INTEGER NOT NULL
);

INSERT INTO operations_new (id, agent_id, agent_name, kind, status, actor, reason, from_version, to_version,
        error_code, error_message, idempotency_key, request_hash, result, result_status, started_at, finished_at,
        duration_ms)
    SELECT o.id, o.agent_id, COALESCE((SELECT a.name FROM agents a WHERE a.id = o.agent_id), ''), o.kind, o.status,
        o.actor, o.reason, o.from_version, o.to_version, o.error_code, o.error_message, o.idempotency_key,
        o.request_hash, o.result, o.result_status, o.started_at, o.finished_at, o.duration_ms
    FROM operations o;

DROP TABLE operations;
ALTER TABLE operations_new RENAME TO operations;

CREATE INDEX operations_agent_started ON operations (agent_id, started_at, id);
CREATE INDEX operations_idempotency ON operations (agent_id, idempotency_key, started_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX operations_idempotency_started ON operations (started_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX operations_running ON operations (started_at, id) WHERE status = 'running';
