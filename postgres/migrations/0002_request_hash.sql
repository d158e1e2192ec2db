-- What a request with an Idempotency-Key asked for (a fingerprint made by
-- the lifecycle engine), so that a later request with the same key is
-- replayed only if it asks for the same thing. Operations recorded before
-- this migration have none and are compared by kind and actor alone.
ALTER TABLE operations ADD COLUMN request_hash TEXT NOT NULL DEFAULT '';
