//! Training samples as recorded: the evaluative part (r_t) and the directive part (the teacher
//! prompts s_t ⊕ h and which hint teaches each response position), with the selection that
//! chose them (DESIGN.md §2).

use clawrl_objective::Selection;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use sqlx::types::Json;

use crate::{Error, Result, json};

/// A hint that a selection ranged over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintRef {
    /// The i-th hint of the same judgement (stored in the same transaction).
    New(usize),
    /// A hint already stored.
    Stored(i64),
}

/// The directive part of a sample to record: the candidates, their teacher prompts and what
/// overlap-guided selection chose among them.
#[derive(Clone, Debug, PartialEq)]
pub struct NewOpd {
    /// The candidate hints, in the order `selection` indexes them.
    pub candidates: Vec<HintRef>,
    /// s_t ⊕ h for every candidate (token ids), same order.
    pub prompts: Vec<Vec<u32>>,
    /// h*_i per response position, and Σ_i O[h,i] per candidate.
    pub selection: Selection,
    /// k of the supports the overlap was counted on.
    pub k: usize,
    /// O[h,i], `[candidates][positions]`.
    pub overlap: Vec<Vec<usize>>,
}

/// A sample to record: RL when `advantage` is set, OPD when `opd` is.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSample {
    /// The turn it trains on.
    pub turn_id: i64,
    /// r_t for an RL sample.
    pub advantage: Option<f64>,
    /// The directive part.
    pub opd: Option<NewOpd>,
    /// The earlier turn whose prompt this (accepted) answer also trains under: accepted-retry
    /// distillation.
    pub retry_of: Option<i64>,
}

/// The teacher of an OPD sample: π_T(·|s_t ⊕ h*_i) at response position i is the model on
/// `prompts[per_position[i]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeacherPlan {
    /// s_t ⊕ h for each hint the sample uses (token ids).
    pub prompts: Vec<Vec<u32>>,
    /// For each response position, the index into `prompts` of its teacher.
    pub per_position: Vec<usize>,
}

/// What selection decided for a sample, as stored and shown in the Studio.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectionRecord {
    /// Mode, h*_i per position, Σ_i O[h,i] per candidate.
    #[serde(flatten)]
    pub selection: Selection,
    /// k of the supports.
    pub k: usize,
    /// O[h,i], `[candidates][positions]`.
    pub overlap: Vec<Vec<usize>>,
    /// The candidates' hint ids, in the order `selection` indexes them.
    #[serde(default)]
    pub hint_ids: Vec<i64>,
}

/// A sample as stored, with its turn's tokens (what the trainer needs).
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Its id.
    pub id: i64,
    /// Its turn.
    pub turn_id: i64,
    /// r_t for RL.
    pub advantage: Option<f64>,
    /// The hint h* when one hint teaches every position.
    pub hint_id: Option<i64>,
    /// The teacher for OPD.
    pub teacher: Option<TeacherPlan>,
    /// The selection's record (none for samples without a directive part).
    pub selection: Option<SelectionRecord>,
    /// pending, trained or dropped.
    pub status: String,
    /// The step that trained it.
    pub step: Option<i64>,
    /// When.
    pub created_at: i64,
    /// The turn's prompt.
    pub prompt_ids: Vec<u32>,
    /// The turn's response.
    pub response_ids: Vec<u32>,
    /// The earlier turn this answer retried (accepted-retry distillation).
    pub retry_of: Option<i64>,
    /// That turn's prompt, s_orig.
    pub retry_prompt_ids: Option<Vec<u32>>,
    /// The step of a rollout (general agents); `None` for a conversation's turn.
    pub rollout: Option<RolloutStep>,
}

/// A sample's turn as a step of a rollout: what its advantage is computed from at batch time
/// (`R_t = o + (1/m)·Σ_j r_t^(j)`, standardised by step index; DESIGN.md §2).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutStep {
    /// The group of rollouts (of one task).
    pub group_id: String,
    /// t: the turn's index among its session's main turns, from 0.
    pub step_index: usize,
    /// o: the outcome reward its session ended with (0 when none was delivered).
    pub outcome: f64,
    /// r_t^(j): the turn's readable votes.
    pub votes: Vec<i8>,
}

/// A sample's row as the database holds it (older rows carry one teacher prompt in
/// `hint_prompt_ids` and an untyped selection).
#[derive(FromRow)]
pub(crate) struct SampleRow {
    id: i64,
    turn_id: i64,
    advantage: Option<f64>,
    hint_id: Option<i64>,
    hint_prompt_ids: Option<Json<Vec<u32>>>,
    teacher: Option<Json<TeacherPlan>>,
    selection: Option<String>,
    status: String,
    step: Option<i64>,
    created_at: i64,
    prompt_ids: Json<Vec<u32>>,
    response_ids: Json<Vec<u32>>,
    retry_of: Option<i64>,
    retry_prompt_ids: Option<Json<Vec<u32>>>,
    group_id: Option<String>,
    outcome: Option<f64>,
    step_index: i64,
    votes: Json<Vec<i8>>,
}

impl From<SampleRow> for Sample {
    fn from(r: SampleRow) -> Self {
        let positions = r.response_ids.0.len();
        let teacher = match (r.teacher, r.hint_prompt_ids) {
            (Some(t), _) => Some(t.0),
            (None, Some(h)) => Some(TeacherPlan {
                prompts: vec![h.0],
                per_position: vec![0; positions],
            }),
            (None, None) => None,
        };
        Sample {
            id: r.id,
            turn_id: r.turn_id,
            advantage: r.advantage,
            hint_id: r.hint_id,
            teacher,
            // Records of older releases without the typed fields are left out.
            selection: r.selection.and_then(|s| serde_json::from_str(&s).ok()),
            status: r.status,
            step: r.step,
            created_at: r.created_at,
            prompt_ids: r.prompt_ids.0,
            response_ids: r.response_ids.0,
            retry_of: r.retry_of,
            retry_prompt_ids: r.retry_prompt_ids.map(|p| p.0),
            rollout: r.group_id.map(|group_id| RolloutStep {
                group_id,
                step_index: usize::try_from(r.step_index).unwrap_or(0),
                outcome: r.outcome.unwrap_or(0.0),
                votes: r.votes.0,
            }),
        }
    }
}

/// The stored ids of `opd`'s candidates; `new_hint_ids` are the ids of the judgement's hints.
fn candidate_ids(opd: &NewOpd, new_hint_ids: &[i64]) -> Result<Vec<i64>> {
    opd.candidates
        .iter()
        .map(|c| match *c {
            HintRef::New(i) => new_hint_ids
                .get(i)
                .copied()
                .ok_or_else(|| Error::NotFound(format!("hint #{i} of the judgement"))),
            HintRef::Stored(id) => Ok(id),
        })
        .collect()
}

/// The teacher of `opd`: the prompts of the hints chosen somewhere, positions re-indexed.
fn teacher_of(opd: &NewOpd) -> Result<TeacherPlan> {
    let used = opd.selection.used();
    let prompts = used
        .iter()
        .map(|&h| {
            opd.prompts
                .get(h)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("the teacher prompt of candidate {h}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let per_position = opd
        .selection
        .per_position
        .iter()
        .map(|h| used.binary_search(h).unwrap_or(0))
        .collect();
    Ok(TeacherPlan {
        prompts,
        per_position,
    })
}

/// Writes `opd` into sample `sample` (teacher, selection, h*) and links the hints it uses.
pub(crate) async fn link_hints(
    tx: &mut sqlx::SqliteConnection,
    sample: i64,
    opd: &NewOpd,
    new_hint_ids: &[i64],
) -> Result<()> {
    let ids = candidate_ids(opd, new_hint_ids)?;
    let record = SelectionRecord {
        selection: opd.selection.clone(),
        k: opd.k,
        overlap: opd.overlap.clone(),
        hint_ids: ids.clone(),
    };
    let chosen = opd
        .selection
        .sequence_hint()
        .and_then(|h| ids.get(h).copied());
    sqlx::query("UPDATE samples SET hint_id = ?1, teacher = ?2, selection = ?3 WHERE id = ?4")
        .bind(chosen)
        .bind(json(&teacher_of(opd)?))
        .bind(json(&record))
        .bind(sample)
        .execute(&mut *tx)
        .await?;
    for h in opd.selection.used() {
        let id = ids
            .get(h)
            .ok_or_else(|| Error::NotFound(format!("candidate {h} of the selection")))?;
        sqlx::query("INSERT OR IGNORE INTO sample_hints (sample_id, hint_id) VALUES (?1, ?2)")
            .bind(sample)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Inserts a sample (and its directive part); returns its id.
async fn insert_sample(
    tx: &mut sqlx::SqliteConnection,
    s: &NewSample,
    new_hint_ids: &[i64],
    now: i64,
) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO samples (turn_id, advantage, retry_of, created_at) VALUES (?1, ?2, ?3, ?4)
         RETURNING id",
    )
    .bind(s.turn_id)
    .bind(s.advantage)
    .bind(s.retry_of)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(opd) = &s.opd {
        link_hints(tx, id, opd, new_hint_ids).await?;
    }
    Ok(id)
}

/// Records `s` as its turn's one pending sample: when the turn has a pending sample, that
/// sample takes the new parts (a new r_t replaces the old; a new selection replaces the old
/// one); else a new sample is inserted. Returns the sample's id. A sample a running step has
/// already read keeps what that step trained (its record may then show the newer parts).
pub(crate) async fn upsert_sample(
    tx: &mut sqlx::SqliteConnection,
    s: &NewSample,
    new_hint_ids: &[i64],
    now: i64,
) -> Result<i64> {
    let pending: Option<(i64,)> = sqlx::query_as(
        "SELECT id FROM samples WHERE turn_id = ?1 AND status = 'pending' ORDER BY id DESC LIMIT 1",
    )
    .bind(s.turn_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id,)) = pending else {
        return insert_sample(tx, s, new_hint_ids, now).await;
    };
    if let Some(a) = s.advantage {
        // A new r_t decides the retry too: an answer no longer accepted distils nothing.
        sqlx::query("UPDATE samples SET advantage = ?1, retry_of = ?2 WHERE id = ?3")
            .bind(a)
            .bind(s.retry_of)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(opd) = &s.opd {
        sqlx::query("DELETE FROM sample_hints WHERE sample_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        link_hints(tx, id, opd, new_hint_ids).await?;
    }
    Ok(id)
}
