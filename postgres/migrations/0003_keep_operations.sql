-- Operations are the audit trail: they outlive their agent. Deleting an
-- agent no longer deletes its operations (agent_id keeps the deleted
-- agent's ID and no longer references agents), and each operation carries
-- the agent's name, so the trail still says which agent it was. It mirrors
-- sqlite/migrations/0003_keep_operations.sql.
--
-- The foreign key from operations to agents is dropped by looking it up in
-- the catalog rather than by its default name (operations_agent_id_fkey),
-- in case a database was created with another. 'operations'::regclass
-- resolves through search_path, like every statement of the store.
DO $$
DECLARE
    fk name;
BEGIN
    FOR fk IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'operations'::regclass AND confrelid = 'agents'::regclass AND contype = 'f'
    LOOP
        EXECUTE format('ALTER TABLE operations DROP CONSTRAINT %I', fk);
    END LOOP;
END
$$;

ALTER TABLE operations ADD COLUMN agent_name TEXT NOT NULL DEFAULT '';

UPDATE operations o SET agent_name = a.name FROM agents a WHERE a.id = o.agent_id;
