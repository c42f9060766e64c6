//! The store: one SQLite file (WAL mode, embedded migrations) that holds everything the loop
//! did — sessions, turns with their token ids and log-probs as generated, next states, judge
//! votes, hints, feedback, training samples, training steps, policy versions, settings and
//! API keys. Every write that the server acknowledges is committed before the reply.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use sqlx::{FromRow, SqlitePool};

mod sample;

pub use sample::{HintRef, NewOpd, NewSample, RolloutStep, Sample, SelectionRecord, TeacherPlan};
use sample::{SampleRow, upsert_sample};
/// JSON columns as the records carry them.
pub use sqlx::types::Json;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that should exist does not.
    #[error("{0} not found")]
    NotFound(String),
}

impl Error {
    /// Whether another connection or process held the database past the busy timeout
    /// (SQLite's `SQLITE_BUSY` or `SQLITE_LOCKED`, any extended code): nothing was written,
    /// and the same call may succeed later.
    pub fn is_busy(&self) -> bool {
        let Error::Db(e) = self else {
            return false;
        };
        e.as_database_error()
            .and_then(|d| d.code())
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6))
    }
}

/// Results of store operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Main-line turns are trained on; side turns (tool planning, summaries) only served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum TurnType {
    /// Part of the conversation; its next state trains it.
    Main,
    /// Served, recorded, never trained on.
    Side,
}

impl FromStr for TurnType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "main" => Ok(Self::Main),
            "side" => Ok(Self::Side),
            _ => Err(format!("turn_type must be \"main\" or \"side\", not {s:?}")),
        }
    }
}

/// What kind of next state s_{t+1} is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum NextKind {
    /// The user's next main-line message.
    Reply,
    /// Explicit feedback: a thumb and/or a correction.
    Feedback,
    /// A tool's output.
    Tool,
}

/// Where a hint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum HintSource {
    /// A judge's `[HINT_START]…[HINT_END]` or a correction the rules judge passed on.
    Judge,
    /// A person in the Studio.
    Annotator,
}

/// A hint's review state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum HintStatus {
    /// Not (yet) used.
    Candidate,
    /// Chosen by overlap-guided selection, or accepted by a person (then it competes in the
    /// turn's selection).
    Accepted,
    /// Turned down by a person.
    Rejected,
}

/// What an API key may do; each role includes the ones before it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum Role {
    /// Chat.
    Client,
    /// Chat, feedback and hints.
    Annotator,
    /// Everything: training control, keys, roll back.
    Owner,
}

/// A sample with its turn's tokens, its retry's prompt and, for a rollout, its step index,
/// its session's outcome and its turn's readable votes ([`sample::SampleRow`]).
const SAMPLE_SELECT: &str = "SELECT s.*, t.prompt_ids, t.response_ids,
        r.prompt_ids AS retry_prompt_ids, g.group_id, g.outcome,
        (SELECT COUNT(*) FROM turns u WHERE u.session_id = t.session_id
             AND u.turn_type = 'main' AND u.id < t.id) AS step_index,
        (SELECT json_group_array(v.value) FROM votes v
             WHERE v.turn_id = t.id AND v.value IS NOT NULL) AS votes
    FROM samples s JOIN turns t ON t.id = s.turn_id JOIN sessions g ON g.id = t.session_id
    LEFT JOIN turns r ON r.id = s.retry_of";

/// A sample `s` (of session `g`) that may train now: pending, and a rollout's only when no
/// session of its group is open and no next state of the group waits for the judge.
const READY: &str = "s.status = 'pending' AND (g.group_id IS NULL OR (
        NOT EXISTS (SELECT 1 FROM sessions o WHERE o.group_id = g.group_id AND o.done = 0)
        AND NOT EXISTS (SELECT 1 FROM next_states n JOIN turns u ON u.id = n.turn_id
                        JOIN sessions o ON o.id = u.session_id
                        WHERE n.judged = 0 AND o.group_id = g.group_id)))";

/// The recursive CTE `line(v, depth)`: version ?1 (depth 0), its parent (1), … down to the
/// base, along `policy_versions.parent`.
const LINEAGE: &str = "line(v, depth) AS (
        SELECT version, 0 FROM policy_versions WHERE version = ?1
        UNION ALL
        SELECT p.parent, line.depth + 1 FROM policy_versions p JOIN line ON p.version = line.v
        WHERE p.parent IS NOT NULL)";

/// A session.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Session {
    /// Its id (client-chosen or generated).
    pub id: String,
    /// First request, ms since the epoch.
    pub created_at: i64,
    /// Latest request.
    pub last_seen: i64,
    /// Ended (by `session_done` or idling).
    pub done: bool,
    /// Turns recorded.
    pub turns: i64,
    /// The group of rollouts it belongs to (general agents); `None` for a conversation.
    pub group_id: Option<String>,
    /// The outcome reward o its `session_done` carried.
    pub outcome: Option<f64>,
}

/// How a session's first answer was judged: the Train view's "does it learn" curve.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct FirstAnswer {
    /// The session.
    pub session_id: String,
    /// When it started, ms since the epoch.
    pub created_at: i64,
    /// Its first main turn.
    pub turn_id: i64,
    /// The policy version that answered.
    pub policy_version: i64,
    /// r_t of that answer: the majority of its readable votes (as `objective::majority`: 0
    /// unless one side outnumbers each other); `None` until judged.
    pub reward: Option<i64>,
}

/// A turn to record.
#[derive(Clone, Debug)]
pub struct NewTurn {
    /// Its session.
    pub session_id: String,
    /// Main or side.
    pub turn_type: TurnType,
    /// The request's messages, s_t.
    pub messages: serde_json::Value,
    /// The request's tools (a JSON array), rendered into s_t and so into s_t ⊕ h too.
    pub tools: Option<serde_json::Value>,
    /// Messages of the request left out so that the prompt fit (not in `messages`).
    pub dropped_messages: usize,
    /// The key of the request's messages plus this answer (see `continued_turn`).
    pub continuation: String,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The response text.
    pub response: String,
    /// The response's token ids, as generated.
    pub response_ids: Vec<u32>,
    /// Log-prob of each response token, as generated.
    pub logprobs: Vec<f32>,
    /// The student's top-k at each position, as generated.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    /// The policy version that answered.
    pub policy_version: i64,
    /// Why generation stopped.
    pub finish_reason: String,
    /// The API key that asked (`None`: no key).
    pub key_id: Option<i64>,
}

/// A recorded turn.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Turn {
    /// Its id.
    pub id: i64,
    /// Its session.
    pub session_id: String,
    /// Main or side.
    pub turn_type: TurnType,
    /// The request's messages, s_t.
    pub messages: Json<serde_json::Value>,
    /// The prompt's token ids.
    pub prompt_ids: Json<Vec<u32>>,
    /// The response text.
    pub response: String,
    /// The response's token ids, as generated.
    pub response_ids: Json<Vec<u32>>,
    /// Log-prob of each response token.
    pub logprobs: Json<Vec<f32>>,
    /// Student top-k per position.
    pub top_logprobs: Json<Vec<Vec<(u32, f32)>>>,
    /// The policy version that answered.
    pub policy_version: i64,
    /// Why generation stopped.
    pub finish_reason: String,
    /// When, ms since the epoch.
    pub created_at: i64,
    /// The request's tools, as given.
    pub tools: Option<Json<serde_json::Value>>,
    /// The key of the request's messages plus this answer.
    #[serde(skip)]
    pub continuation: Option<String>,
    /// Messages of the request left out so that the prompt fit.
    pub dropped_messages: i64,
}

/// A next state waiting for (or past) judging.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct NextState {
    /// Its id.
    pub id: i64,
    /// The turn it follows.
    pub turn_id: i64,
    /// What it is.
    pub kind: NextKind,
    /// Its text (the reply, the correction, the tool output).
    pub text: String,
    /// Judged already.
    pub judged: bool,
    /// When.
    pub created_at: i64,
    /// The API key that sent it (`None`: no key).
    pub key_id: Option<i64>,
}

/// A judge's vote.
#[derive(Clone, Debug, Serialize, Deserialize, FromRow)]
pub struct Vote {
    /// The judge's name.
    pub judge: String,
    /// +1, −1 or 0; `None` when the judge's answer held no readable vote.
    pub value: Option<i64>,
    /// The judge's raw answer.
    pub raw: String,
    /// The API key of the next state it judged (`None`: no key); set when recorded.
    #[sqlx(default)]
    pub key_id: Option<i64>,
}

/// A hint to record.
#[derive(Clone, Debug)]
pub struct NewHint {
    /// The hint.
    pub text: String,
    /// Judge or annotator.
    pub source: HintSource,
    /// Who: the judge's name or the annotator's key name.
    pub author: String,
    /// Σ_i O[h,i] when scored.
    pub overlap: Option<i64>,
    /// Review state.
    pub status: HintStatus,
    /// The API key it came from: the annotator's, or for a judge's hint none here (it takes
    /// the key of the next state it was read from).
    pub key_id: Option<i64>,
}

/// A recorded hint.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Hint {
    /// Its id.
    pub id: i64,
    /// The turn it corrects.
    pub turn_id: i64,
    /// The hint.
    pub text: String,
    /// Judge or annotator.
    pub source: HintSource,
    /// Who.
    pub author: String,
    /// Review state.
    pub status: HintStatus,
    /// Σ_i O[h,i] when scored.
    pub overlap: Option<i64>,
    /// When.
    pub created_at: i64,
    /// The API key it came from (`None`: no key).
    pub key_id: Option<i64>,
}

/// A training step's record.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Step {
    /// Row id (increasing; step numbers repeat after a roll back).
    pub id: i64,
    /// Step number.
    pub step: i64,
    /// The version it published.
    pub policy_version: i64,
    /// The objective's metrics and more (JSON).
    pub metrics: Json<serde_json::Value>,
    /// Wall time of the step.
    pub seconds: f64,
    /// When.
    pub created_at: i64,
}

/// A policy version.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Version {
    /// Its number (0 is the base model).
    pub version: i64,
    /// The training step that made it.
    pub step: i64,
    /// Its checkpoint directory (none for the base).
    pub checkpoint: Option<String>,
    /// When.
    pub created_at: i64,
    /// The version its step continued from (none for the base).
    pub parent: Option<i64>,
}

/// A version a training step publishes, as [`Store::record_step`] records it.
#[derive(Clone, Copy, Debug)]
pub struct NewVersion<'a> {
    /// Its number.
    pub version: i64,
    /// The version the step continued from: the one served when it began (after a roll back,
    /// the version rolled back to).
    pub parent: i64,
    /// The optimizer step that made it.
    pub step: i64,
    /// Its checkpoint directory.
    pub checkpoint: &'a str,
}

/// A key's public record (never the key).
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct ApiKey {
    /// Its id.
    pub id: i64,
    /// A name for people.
    pub name: String,
    /// Its rights.
    pub role: Role,
    /// When.
    pub created_at: i64,
}

/// What a judge concluded about one next state, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct Judgement {
    /// The judge's votes.
    pub votes: Vec<Vote>,
    /// Candidate hints (the chosen one accepted).
    pub hints: Vec<NewHint>,
    /// The sample the turn yields, if any.
    pub sample: Option<NewSample>,
}

pub(crate) fn json<T: Serialize + ?Sized>(v: &T) -> String {
    // Serializing plain vectors and `Value`s cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// SHA-256 of a key, hex; only hashes are stored.
fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Db(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the server acknowledges it.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front, so concurrent
    /// writers queue on the busy timeout; a deferred transaction that reads first could fail at
    /// its first write with "database is locked" instead.
    async fn write(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Creates the session if new and marks it seen now (a session that had ended by idling
    /// and is continued is open again). `group_id` makes it a rollout of that group; a later
    /// request without one leaves the group as it was.
    pub async fn touch_session(&self, id: &str, group_id: Option<&str>) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sessions (id, created_at, last_seen, group_id) VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET last_seen = ?2, done = 0,
                 group_id = COALESCE(?3, group_id)",
        )
        .bind(id)
        .bind(now)
        .bind(group_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a session ended, with the outcome reward o when the client knows one.
    pub async fn end_session(&self, id: &str, outcome: Option<f64>) -> Result<()> {
        sqlx::query("UPDATE sessions SET done = 1, outcome = COALESCE(?2, outcome) WHERE id = ?1")
            .bind(id)
            .bind(outcome)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends every open session not seen since `before` (ms); returns their ids.
    pub async fn end_idle_sessions(&self, before: i64) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "UPDATE sessions SET done = 1 WHERE done = 0 AND last_seen < ?1 RETURNING id",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Sessions, most recent first.
    pub async fn sessions(&self, limit: i64, offset: i64) -> Result<Vec<Session>> {
        Ok(sqlx::query_as(
            "SELECT s.id, s.created_at, s.last_seen, s.done, s.group_id, s.outcome,
                    (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id) AS turns
             FROM sessions s ORDER BY s.last_seen DESC LIMIT ?1 OFFSET ?2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The first answers of the latest `limit` sessions, oldest first, with their rewards.
    pub async fn first_answers(&self, limit: i64) -> Result<Vec<FirstAnswer>> {
        let mut rows: Vec<FirstAnswer> = sqlx::query_as(
            "SELECT s.id AS session_id, s.created_at, t.id AS turn_id, t.policy_version,
                    (SELECT CASE WHEN up > down AND up > zero THEN 1
                                 WHEN down > up AND down > zero THEN -1
                                 WHEN up + down + zero > 0 THEN 0 END
                     FROM (SELECT SUM(v.value = 1) AS up, SUM(v.value = -1) AS down,
                                  SUM(v.value = 0) AS zero
                           FROM votes v WHERE v.turn_id = t.id)) AS reward
             FROM sessions s
             JOIN turns t ON t.id = (SELECT MIN(id) FROM turns
                                     WHERE session_id = s.id AND turn_type = 'main')
             ORDER BY s.created_at DESC, s.rowid DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        Ok(rows)
    }

    /// One session.
    pub async fn session(&self, id: &str) -> Result<Session> {
        sqlx::query_as(
            "SELECT s.id, s.created_at, s.last_seen, s.done, s.group_id, s.outcome,
                    (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id) AS turns
             FROM sessions s WHERE s.id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("session {id:?}")))
    }

    /// Pairs a new main-line request with the session's latest main turn that has no next
    /// state yet: `text` (the request's new user or tool content) becomes that turn's next
    /// state. Returns (turn id, next state id) when there was such a turn.
    pub async fn pair_next_state(
        &self,
        session_id: &str,
        kind: NextKind,
        text: &str,
        key_id: Option<i64>,
    ) -> Result<Option<(i64, i64)>> {
        let now = now_ms();
        let mut tx = self.write().await?;
        let previous: Option<(i64,)> = sqlx::query_as(
            "SELECT t.id FROM turns t WHERE t.session_id = ?1 AND t.turn_type = 'main'
               AND NOT EXISTS (SELECT 1 FROM next_states n WHERE n.turn_id = t.id
                               AND n.kind IN ('reply', 'tool'))
             ORDER BY t.id DESC LIMIT 1",
        )
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((turn,)) = previous else {
            return Ok(None);
        };
        let id = insert_next_state(&mut tx, turn, kind, text, key_id, now).await?;
        tx.commit().await?;
        Ok(Some((turn, id)))
    }

    /// Pairs `text` with exactly `turn_id` as its next state, when that main turn has no reply
    /// or tool next state yet (the turn a replayed history continues). Returns the next
    /// state's id.
    pub async fn pair_turn(
        &self,
        turn_id: i64,
        kind: NextKind,
        text: &str,
        key_id: Option<i64>,
    ) -> Result<Option<i64>> {
        let mut tx = self.write().await?;
        let open: Option<(i64,)> = sqlx::query_as(
            "SELECT t.id FROM turns t WHERE t.id = ?1 AND t.turn_type = 'main'
               AND NOT EXISTS (SELECT 1 FROM next_states n WHERE n.turn_id = t.id
                               AND n.kind IN ('reply', 'tool'))",
        )
        .bind(turn_id)
        .fetch_optional(&mut *tx)
        .await?;
        if open.is_none() {
            return Ok(None);
        }
        let id = insert_next_state(&mut tx, turn_id, kind, text, key_id, now_ms()).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Records a served turn (creating its session if new).
    pub async fn record_turn(&self, t: &NewTurn) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO sessions (id, created_at, last_seen) VALUES (?1, ?2, ?2)
             ON CONFLICT(id) DO UPDATE SET last_seen = ?2",
        )
        .bind(&t.session_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO turns (session_id, turn_type, messages, prompt_ids, response,
                                response_ids, logprobs, top_logprobs, policy_version,
                                finish_reason, created_at, tools, dropped_messages,
                                continuation, key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
             RETURNING id",
        )
        .bind(&t.session_id)
        .bind(t.turn_type)
        .bind(json(&t.messages))
        .bind(json(&t.prompt_ids))
        .bind(&t.response)
        .bind(json(&t.response_ids))
        .bind(json(&t.logprobs))
        .bind(json(&t.top_logprobs))
        .bind(t.policy_version)
        .bind(&t.finish_reason)
        .bind(now)
        .bind(t.tools.as_ref().map(json))
        .bind(t.dropped_messages as i64)
        .bind(&t.continuation)
        .bind(t.key_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The latest main turn whose messages plus answer have the continuation key `key`, as
    /// (turn id, session id): the conversation a request without a session id continues.
    pub async fn continued_turn(&self, key: &str) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT id, session_id FROM turns WHERE continuation = ?1 AND turn_type = 'main'
             ORDER BY id DESC LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// One turn.
    pub async fn turn(&self, id: i64) -> Result<Turn> {
        sqlx::query_as("SELECT * FROM turns WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("turn {id}")))
    }

    /// A session's turns in order.
    pub async fn turns_of(&self, session_id: &str) -> Result<Vec<Turn>> {
        Ok(
            sqlx::query_as("SELECT * FROM turns WHERE session_id = ?1 ORDER BY id")
                .bind(session_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Turns whose next state was judged, most recent first (the annotation queue).
    pub async fn judged_turns(&self, limit: i64) -> Result<Vec<Turn>> {
        Ok(sqlx::query_as(
            "SELECT * FROM turns t WHERE EXISTS
               (SELECT 1 FROM next_states n WHERE n.turn_id = t.id AND n.judged = 1)
             ORDER BY t.id DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records explicit feedback on a turn and makes it a next state to judge, atomically.
    pub async fn record_feedback(
        &self,
        turn_id: i64,
        thumb: Option<i8>,
        correction: Option<&str>,
        author: &str,
        key_id: Option<i64>,
    ) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO feedback (turn_id, thumb, correction, author, created_at, key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(turn_id)
        .bind(thumb.map(i64::from))
        .bind(correction)
        .bind(author)
        .bind(now)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
        // The judge reads the feedback back as text: the thumb as a word, then the correction.
        let mut text = match thumb {
            Some(1) => "[thumbs up]".to_string(),
            Some(_) => "[thumbs down]".to_string(),
            None => String::new(),
        };
        if let Some(c) = correction {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(c);
        }
        let id =
            insert_next_state(&mut tx, turn_id, NextKind::Feedback, &text, key_id, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Next states not judged yet, oldest first.
    pub async fn unjudged(&self, limit: i64) -> Result<Vec<NextState>> {
        Ok(
            sqlx::query_as("SELECT * FROM next_states WHERE judged = 0 ORDER BY id LIMIT ?1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The rows `sql` selects for `turn_id` (its only parameter).
    async fn of_turn<T>(&self, sql: &str, turn_id: i64) -> Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        Ok(sqlx::query_as(sql)
            .bind(turn_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Next states of a turn.
    pub async fn next_states_of(&self, turn_id: i64) -> Result<Vec<NextState>> {
        self.of_turn(
            "SELECT * FROM next_states WHERE turn_id = ?1 ORDER BY id",
            turn_id,
        )
        .await
    }

    /// Writes a judgement (votes, hints, the sample) and marks the next state judged, in one
    /// transaction. Returns the sample's id.
    pub async fn record_judgement(
        &self,
        next_state_id: i64,
        turn_id: i64,
        j: &Judgement,
    ) -> Result<Option<i64>> {
        let now = now_ms();
        let mut tx = self.write().await?;
        for v in &j.votes {
            sqlx::query(
                "INSERT INTO votes (turn_id, judge, value, raw, created_at, key_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, (SELECT key_id FROM next_states WHERE id = ?6))",
            )
            .bind(turn_id)
            .bind(&v.judge)
            .bind(v.value)
            .bind(&v.raw)
            .bind(now)
            .bind(next_state_id)
            .execute(&mut *tx)
            .await?;
        }
        let mut hint_ids = Vec::with_capacity(j.hints.len());
        for h in &j.hints {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO hints (turn_id, text, source, author, status, overlap, created_at,
                                    key_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                         COALESCE(?8, (SELECT key_id FROM next_states WHERE id = ?9)))
                 RETURNING id",
            )
            .bind(turn_id)
            .bind(&h.text)
            .bind(h.source)
            .bind(&h.author)
            .bind(h.status)
            .bind(h.overlap)
            .bind(now)
            .bind(h.key_id)
            .bind(next_state_id)
            .fetch_one(&mut *tx)
            .await?;
            hint_ids.push(id);
        }
        let sample = match &j.sample {
            Some(s) => Some(upsert_sample(&mut tx, s, &hint_ids, now).await?),
            None => None,
        };
        sqlx::query("UPDATE next_states SET judged = 1 WHERE id = ?1")
            .bind(next_state_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(sample)
    }

    /// Adds an annotator's candidate hint to a turn.
    pub async fn add_hint(&self, turn_id: i64, h: &NewHint) -> Result<i64> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO hints (turn_id, text, source, author, status, overlap, created_at, key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )
        .bind(turn_id)
        .bind(&h.text)
        .bind(h.source)
        .bind(&h.author)
        .bind(h.status)
        .bind(h.overlap)
        .bind(now_ms())
        .bind(h.key_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// One hint.
    pub async fn hint(&self, id: i64) -> Result<Hint> {
        sqlx::query_as("SELECT * FROM hints WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("hint {id}")))
    }

    /// A turn's hints.
    pub async fn hints_of(&self, turn_id: i64) -> Result<Vec<Hint>> {
        self.of_turn(
            "SELECT * FROM hints WHERE turn_id = ?1 ORDER BY id",
            turn_id,
        )
        .await
    }

    /// A turn's votes.
    pub async fn votes_of(&self, turn_id: i64) -> Result<Vec<Vote>> {
        self.of_turn(
            "SELECT judge, value, raw, key_id FROM votes WHERE turn_id = ?1 ORDER BY id",
            turn_id,
        )
        .await
    }

    /// Rejects a hint; its pending samples are dropped so they never train.
    pub async fn reject_hint(&self, id: i64) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query("UPDATE hints SET status = 'rejected' WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("hint {id}")));
        }
        sqlx::query(
            "UPDATE samples SET status = 'dropped' WHERE status = 'pending' AND (hint_id = ?1
               OR id IN (SELECT sample_id FROM sample_hints WHERE hint_id = ?1))",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Accepts a stored hint and makes `opd` (a selection among the turn's candidates, this
    /// hint one of them) the turn's directive part, atomically: the turn's pending sample takes
    /// it (one OPD sample per turn), or, when none is pending, a new sample is recorded.
    /// Returns the sample's id.
    pub async fn accept_hint(&self, id: i64, turn_id: i64, opd: &NewOpd) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.write().await?;
        let done =
            sqlx::query("UPDATE hints SET status = 'accepted' WHERE id = ?1 AND turn_id = ?2")
                .bind(id)
                .bind(turn_id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("hint {id} of turn {turn_id}")));
        }
        let new = NewSample {
            turn_id,
            advantage: None,
            opd: Some(opd.clone()),
            retry_of: None,
        };
        let sample = upsert_sample(&mut tx, &new, &[], now).await?;
        tx.commit().await?;
        Ok(sample)
    }

    /// Samples ready to train, oldest first, with their turns' tokens: pending ones, a
    /// rollout's only once every session of its group has ended and been judged (its
    /// advantage needs the outcome and the group's other steps).
    pub async fn pending_samples(&self, limit: i64) -> Result<Vec<Sample>> {
        let rows: Vec<SampleRow> = sqlx::query_as(&format!(
            "{SAMPLE_SELECT} WHERE {READY} ORDER BY s.id LIMIT ?1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Sample::from).collect())
    }

    /// The versions `version` descends from, itself first, then its parent, down to the base
    /// (the `parent` links [`Store::record_step`] records). Empty for an unknown version.
    pub async fn lineage(&self, version: i64) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(&format!(
            "WITH RECURSIVE {LINEAGE} SELECT v FROM line ORDER BY depth"
        ))
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// Ids of the samples that carry an accepted retry (`retry_of`) and trained one of the
    /// versions `version` descends from ([`Store::lineage`]), oldest first: the pool retry
    /// replay draws from. What a roll back abandoned is not in it, nor a sample whose turn was
    /// voted on again since (a later thumbs up or down: the newest vote is the turn's word).
    pub async fn trained_retry_ids(&self, version: i64) -> Result<Vec<i64>> {
        let ids: Vec<(i64,)> = sqlx::query_as(&format!(
            "WITH RECURSIVE {LINEAGE}
             SELECT s.id FROM samples s
             WHERE s.status = 'trained' AND s.retry_of IS NOT NULL
               AND s.trained_version IN (SELECT v FROM line)
               AND NOT EXISTS (SELECT 1 FROM samples l
                               WHERE l.turn_id = s.turn_id AND l.id > s.id
                                 AND l.status != 'dropped' AND l.advantage IS NOT NULL)
             ORDER BY s.id"
        ))
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// The samples with these ids (as [`Store::pending_samples`] reads them), in id order;
    /// unknown ids are skipped.
    pub async fn samples_by_id(&self, ids: &[i64]) -> Result<Vec<Sample>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!("{SAMPLE_SELECT} WHERE s.id IN ("));
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(") ORDER BY s.id");
        let rows: Vec<SampleRow> = q.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(Sample::from).collect())
    }

    /// Samples ready to train (as [`Store::pending_samples`] takes them).
    pub async fn count_pending(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM samples s JOIN turns t ON t.id = s.turn_id
             JOIN sessions g ON g.id = t.session_id WHERE {READY}"
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// The turn that an answer accepted at `turn_id` retried: the first of the run of main
    /// turns just before it in its session that were corrected — a majority of their readable
    /// votes −1 (as `objective::majority`) and a hint — whose prompt is the original s_t; `None`
    /// when the turn just before was not corrected (or is not judged yet).
    pub async fn retried_turn(&self, turn_id: i64) -> Result<Option<i64>> {
        let earlier: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT t.id,
                    COALESCE((SELECT down > up AND down > zero
                              FROM (SELECT SUM(v.value = 1) AS up, SUM(v.value = -1) AS down,
                                           SUM(v.value = 0) AS zero
                                    FROM votes v WHERE v.turn_id = t.id)), 0)
                    AND EXISTS (SELECT 1 FROM hints h WHERE h.turn_id = t.id)
             FROM turns t
             WHERE t.session_id = (SELECT session_id FROM turns WHERE id = ?1)
               AND t.id < ?1 AND t.turn_type = 'main'
             ORDER BY t.id DESC LIMIT 64",
        )
        .bind(turn_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(earlier
            .iter()
            .take_while(|(_, corrected)| *corrected)
            .last()
            .map(|(id, _)| *id))
    }

    /// Samples of a turn.
    pub async fn samples_of(&self, turn_id: i64) -> Result<Vec<Sample>> {
        let rows: Vec<SampleRow> = self
            .of_turn(
                &format!("{SAMPLE_SELECT} WHERE s.turn_id = ?1 ORDER BY s.id"),
                turn_id,
            )
            .await?;
        Ok(rows.into_iter().map(Sample::from).collect())
    }

    /// Records a finished step in one transaction: its metrics, the version `v` it published
    /// (with the version it continued from), and its samples marked trained, each as (id, the advantage it trained with: a rollout's is
    /// computed at batch time; `None` keeps the stored one).
    pub async fn record_step<M: Serialize>(
        &self,
        v: &NewVersion<'_>,
        metrics: &M,
        seconds: f64,
        samples: &[(i64, Option<f64>)],
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO train_steps (step, policy_version, metrics, seconds, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(v.step)
        .bind(v.version)
        .bind(json(metrics))
        .bind(seconds)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO policy_versions (version, step, checkpoint, created_at, parent)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(v.version)
        .bind(v.step)
        .bind(v.checkpoint)
        .bind(now)
        .bind(v.parent)
        .execute(&mut *tx)
        .await?;
        for (id, advantage) in samples {
            // A sample rejected while the step ran stays dropped.
            sqlx::query(
                "UPDATE samples SET status = 'trained', step = ?1, trained_version = ?4,
                     advantage = COALESCE(?3, advantage)
                 WHERE id = ?2 AND status = 'pending'",
            )
            .bind(v.step)
            .bind(id)
            .bind(advantage)
            .bind(v.version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Training steps, oldest first, after row id `after`.
    pub async fn steps(&self, after: i64, limit: i64) -> Result<Vec<Step>> {
        Ok(
            sqlx::query_as("SELECT * FROM train_steps WHERE id > ?1 ORDER BY id LIMIT ?2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Policy versions, oldest first.
    pub async fn versions(&self) -> Result<Vec<Version>> {
        Ok(
            sqlx::query_as("SELECT * FROM policy_versions ORDER BY version")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// One policy version.
    pub async fn version(&self, v: i64) -> Result<Version> {
        sqlx::query_as("SELECT * FROM policy_versions WHERE version = ?1")
            .bind(v)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("policy version {v}")))
    }

    /// A setting's value.
    pub async fn setting(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let row: Option<(Json<serde_json::Value>,)> =
            sqlx::query_as("SELECT value FROM settings WHERE key = ?1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(v,)| v.0))
    }

    /// Sets a setting.
    pub async fn set_setting(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = ?2",
        )
        .bind(key)
        .bind(json(value))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a key's hash with its role (re-adding a key updates its role).
    pub async fn add_key(&self, name: &str, key: &str, role: Role) -> Result<i64> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO api_keys (name, key_hash, role, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(key_hash) DO UPDATE SET role = ?3, name = ?1 RETURNING id",
        )
        .bind(name)
        .bind(hash_key(key))
        .bind(role)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The id, name and role of `key`, if it is known.
    pub async fn key_role(&self, key: &str) -> Result<Option<(i64, String, Role)>> {
        Ok(
            sqlx::query_as("SELECT id, name, role FROM api_keys WHERE key_hash = ?1")
                .bind(hash_key(key))
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Keys (without the keys themselves).
    pub async fn keys(&self) -> Result<Vec<ApiKey>> {
        Ok(
            sqlx::query_as("SELECT id, name, role, created_at FROM api_keys ORDER BY id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Deletes a key.
    pub async fn delete_key(&self, id: i64) -> Result<()> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("key {id}")));
        }
        Ok(())
    }

    /// Rejects every contribution of key `key_id`, in one transaction: its hints are rejected,
    /// its unjudged next states are set aside (never judged), and every sample it touched (of
    /// a turn it asked or replied to, or with one of its hints) is dropped. Trained samples
    /// make their versions suspect: from the first of them, the other samples trained since
    /// are queued again, so that a roll back to the version before it loses nothing else.
    /// The caller rolls back (see [`Rejection::first_version`]).
    pub async fn reject_key(&self, key_id: i64) -> Result<Rejection> {
        let mut tx = self.write().await?;
        // The turns it touched, and its hints.
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS rejected_turns (id INTEGER PRIMARY KEY)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM rejected_turns")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO rejected_turns
             SELECT id FROM turns WHERE key_id = ?1
             UNION SELECT turn_id FROM next_states WHERE key_id = ?1",
        )
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
        let tainted = "(turn_id IN (SELECT id FROM rejected_turns)
                        OR hint_id IN (SELECT id FROM hints WHERE key_id = ?1))";
        let (first_version,): (Option<i64>,) = sqlx::query_as(&format!(
            "SELECT MIN(trained_version) FROM samples WHERE status = 'trained' AND {tainted}"
        ))
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        let samples_dropped = sqlx::query(&format!(
            "UPDATE samples SET status = 'dropped' WHERE status != 'dropped' AND {tainted}"
        ))
        .bind(key_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let hints_rejected = sqlx::query(
            "UPDATE hints SET status = 'rejected' WHERE key_id = ?1 AND status != 'rejected'",
        )
        .bind(key_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let next_states_set_aside =
            sqlx::query("UPDATE next_states SET judged = 1 WHERE key_id = ?1 AND judged = 0")
                .bind(key_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let samples_requeued = match first_version {
            Some(v) => sqlx::query(
                "UPDATE samples SET status = 'pending', step = NULL, trained_version = NULL
                 WHERE status = 'trained' AND trained_version >= ?1",
            )
            .bind(v)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => 0,
        };
        sqlx::query("DELETE FROM rejected_turns")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Rejection {
            key_id,
            hints_rejected,
            samples_dropped,
            next_states_set_aside,
            samples_requeued,
            first_version,
        })
    }

    /// Counts of what the store holds, for `/metrics`.
    pub async fn counts(&self) -> Result<Counts> {
        Ok(sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM sessions) AS sessions,
                    (SELECT COUNT(*) FROM turns) AS turns,
                    (SELECT COUNT(*) FROM votes) AS votes,
                    (SELECT COUNT(*) FROM hints) AS hints,
                    (SELECT COUNT(*) FROM samples) AS samples,
                    (SELECT COUNT(*) FROM samples WHERE status = 'pending') AS pending_samples,
                    (SELECT COUNT(*) FROM train_steps) AS steps,
                    (SELECT COUNT(*) FROM next_states WHERE judged = 0) AS unjudged",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

/// Inserts a next state of `turn`; returns its id.
async fn insert_next_state(
    tx: &mut sqlx::SqliteConnection,
    turn: i64,
    kind: NextKind,
    text: &str,
    key_id: Option<i64>,
    now: i64,
) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO next_states (turn_id, kind, text, created_at, key_id)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
    )
    .bind(turn)
    .bind(kind)
    .bind(text)
    .bind(now)
    .bind(key_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(id)
}

/// What rejecting a key's contributions did ([`Store::reject_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The key.
    pub key_id: i64,
    /// Its hints, now rejected.
    pub hints_rejected: u64,
    /// Samples it touched, now dropped (pending or trained).
    pub samples_dropped: u64,
    /// Its next states that were waiting for the judge, now never judged.
    pub next_states_set_aside: u64,
    /// Other samples trained since `first_version`, pending again.
    pub samples_requeued: u64,
    /// The first version trained on one of its samples: serving must go back before it.
    pub first_version: Option<i64>,
}

/// Row counts.
#[derive(Clone, Copy, Debug, Serialize, FromRow)]
pub struct Counts {
    /// Sessions.
    pub sessions: i64,
    /// Turns.
    pub turns: i64,
    /// Votes.
    pub votes: i64,
    /// Hints.
    pub hints: i64,
    /// Samples.
    pub samples: i64,
    /// Samples waiting for training.
    pub pending_samples: i64,
    /// Training steps.
    pub steps: i64,
    /// Next states waiting for the judge.
    pub unjudged: i64,
}
