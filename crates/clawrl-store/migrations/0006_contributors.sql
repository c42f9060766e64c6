-- Poisoning: every contribution carries the API key it came from (NULL: no key, on loopback
-- without keys; or the judge itself), so that an owner can reject one key's contributions and
-- roll back the versions trained on them. A vote or a judge's hint carries the key of the next
-- state it judged.
ALTER TABLE turns ADD COLUMN key_id INTEGER;
ALTER TABLE next_states ADD COLUMN key_id INTEGER;
ALTER TABLE votes ADD COLUMN key_id INTEGER;
ALTER TABLE hints ADD COLUMN key_id INTEGER;
ALTER TABLE feedback ADD COLUMN key_id INTEGER;
-- The version a sample's step published (NULL while pending; steps repeat after a roll back).
ALTER TABLE samples ADD COLUMN trained_version INTEGER;
CREATE INDEX next_states_key ON next_states(key_id) WHERE key_id IS NOT NULL;
CREATE INDEX turns_key ON turns(key_id) WHERE key_id IS NOT NULL;
CREATE INDEX hints_key ON hints(key_id) WHERE key_id IS NOT NULL;
