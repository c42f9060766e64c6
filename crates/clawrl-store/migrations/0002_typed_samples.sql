-- Votes a judge answered without a readable vote are kept (their raw answer) with no value:
-- they take no part in the majority.
CREATE TABLE votes_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id     INTEGER NOT NULL REFERENCES turns(id),
    judge       TEXT NOT NULL,
    value       INTEGER CHECK (value IN (-1, 0, 1)),
    raw         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
INSERT INTO votes_new (id, turn_id, judge, value, raw, created_at)
    SELECT id, turn_id, judge, value, raw, created_at FROM votes;
DROP TABLE votes;
ALTER TABLE votes_new RENAME TO votes;
CREATE INDEX votes_turn ON votes(turn_id);

-- The request's tools (JSON array), so that the teacher prompt s_t ⊕ h renders them as the
-- student's prompt did.
ALTER TABLE turns ADD COLUMN tools TEXT;

-- The directive part of a sample: the teacher prompts s_t ⊕ h of the hints it uses and, per
-- response position, which of them teaches there (token mode chooses per position).
-- JSON {"prompts": [[u32]], "per_position": [usize]}. Older rows keep hint_prompt_ids.
ALTER TABLE samples ADD COLUMN teacher TEXT;

-- Every hint a sample trains on, so that rejecting any of them drops the sample.
CREATE TABLE sample_hints (
    sample_id   INTEGER NOT NULL REFERENCES samples(id),
    hint_id     INTEGER NOT NULL REFERENCES hints(id),
    PRIMARY KEY (sample_id, hint_id)
);
INSERT INTO sample_hints (sample_id, hint_id)
    SELECT id, hint_id FROM samples WHERE hint_id IS NOT NULL;
CREATE INDEX sample_hints_hint ON sample_hints(hint_id);
