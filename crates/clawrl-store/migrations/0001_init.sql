-- The loop's record (DESIGN.md §1): every stage writes what it did here.

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    done        INTEGER NOT NULL DEFAULT 0
);

-- A served answer, with the token ids and log-probs exactly as generation produced them.
CREATE TABLE turns (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id      TEXT NOT NULL REFERENCES sessions(id),
    turn_type       TEXT NOT NULL CHECK (turn_type IN ('main', 'side')),
    messages        TEXT NOT NULL,          -- the request's messages (JSON), s_t
    prompt_ids      TEXT NOT NULL,          -- JSON [u32]
    response        TEXT NOT NULL,
    response_ids    TEXT NOT NULL,          -- JSON [u32]
    logprobs        TEXT NOT NULL,          -- JSON [f32], one per response token
    top_logprobs    TEXT NOT NULL,          -- JSON [[[id, logprob]]], student top-k
    policy_version  INTEGER NOT NULL,
    finish_reason   TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX turns_session ON turns(session_id, id);

-- s_{t+1}: the next main-line request, explicit feedback, or a tool's output.
CREATE TABLE next_states (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id     INTEGER NOT NULL REFERENCES turns(id),
    kind        TEXT NOT NULL CHECK (kind IN ('reply', 'feedback', 'tool', 'done')),
    text        TEXT NOT NULL,
    judged      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE INDEX next_states_pending ON next_states(judged, id);

CREATE TABLE votes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id     INTEGER NOT NULL REFERENCES turns(id),
    judge       TEXT NOT NULL,
    value       INTEGER NOT NULL CHECK (value IN (-1, 0, 1)),
    raw         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX votes_turn ON votes(turn_id);

CREATE TABLE hints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id     INTEGER NOT NULL REFERENCES turns(id),
    text        TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('judge', 'annotator')),
    author      TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'candidate' CHECK (status IN ('candidate', 'accepted', 'rejected')),
    overlap     INTEGER,                   -- Σ_i O[h,i] when scored
    created_at  INTEGER NOT NULL
);
CREATE INDEX hints_turn ON hints(turn_id);

CREATE TABLE feedback (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id     INTEGER NOT NULL REFERENCES turns(id),
    thumb       INTEGER CHECK (thumb IN (-1, 1)),
    correction  TEXT,
    author      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- A training sample: RL (advantage) and/or OPD (chosen hint), stored before it is acknowledged.
CREATE TABLE samples (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id         INTEGER NOT NULL REFERENCES turns(id),
    advantage       REAL,
    hint_id         INTEGER REFERENCES hints(id),
    hint_prompt_ids TEXT,                   -- JSON [u32], s_t ⊕ h*
    selection       TEXT,                   -- JSON: mode, k, O[h,i], totals, chosen
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'trained', 'dropped')),
    step            INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX samples_pending ON samples(status, id);

-- Step numbers repeat after a roll back (training continues from the older version).
CREATE TABLE train_steps (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    step            INTEGER NOT NULL,
    policy_version  INTEGER NOT NULL,
    metrics         TEXT NOT NULL,          -- JSON
    seconds         REAL NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE policy_versions (
    version     INTEGER PRIMARY KEY,
    step        INTEGER NOT NULL,
    checkpoint  TEXT,                       -- directory; NULL for the base (version 0)
    created_at  INTEGER NOT NULL
);
INSERT INTO policy_versions (version, step, checkpoint, created_at) VALUES (0, 0, NULL, 0);

CREATE TABLE settings (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);

CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('client', 'annotator', 'owner')),
    created_at  INTEGER NOT NULL
);
