-- Sessions recovered from replayed histories (clients such as OpenClaw send no session id):
-- the key of a turn's messages plus its answer, which the next request of the same
-- conversation carries again. And how many messages the server's opt-in policy dropped so
-- that the prompt fit (the stored messages are those the model saw).
ALTER TABLE turns ADD COLUMN continuation TEXT;
ALTER TABLE turns ADD COLUMN dropped_messages INTEGER NOT NULL DEFAULT 0;
CREATE INDEX turns_continuation ON turns(continuation);
