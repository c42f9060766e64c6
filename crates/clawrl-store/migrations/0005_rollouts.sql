-- General agents (DESIGN.md §8): a rollout is a session of a group (the rollouts of one task);
-- its outcome reward o arrives with `session_done`. A rollout's samples train once every
-- session of its group has ended and been judged, with R_t = o + mean vote, standardised
-- among the batch's actions of the same step index (DESIGN.md §2).
ALTER TABLE sessions ADD COLUMN group_id TEXT;
ALTER TABLE sessions ADD COLUMN outcome REAL;
CREATE INDEX sessions_group ON sessions(group_id) WHERE group_id IS NOT NULL;
