-- Accepted-retry distillation (README, "Extensions"): a sample whose accepted answer retried
-- earlier rejected turns of its session also trains that answer under the first of their
-- prompts, the original s_t.
ALTER TABLE samples ADD COLUMN retry_of INTEGER REFERENCES turns(id);
