-- A version's parent: the version its training step continued from (the one served when the
-- step began; NULL for the base). Retry replay follows these links, so that a roll back forgets
-- the branch it abandoned. Older versions get the rule that held until now: the newest earlier
-- version made at an earlier step.
ALTER TABLE policy_versions ADD COLUMN parent INTEGER;
UPDATE policy_versions SET parent = (
    SELECT p.version FROM policy_versions p
    WHERE p.version < policy_versions.version AND p.step < policy_versions.step
    ORDER BY p.version DESC LIMIT 1
) WHERE version > 0;
-- Samples trained before 0006 carry no trained_version: the first version their step published.
UPDATE samples SET trained_version = (
    SELECT MIN(policy_version) FROM train_steps t WHERE t.step = samples.step
) WHERE status = 'trained' AND trained_version IS NULL;
