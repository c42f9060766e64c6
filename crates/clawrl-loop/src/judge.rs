//! JUDGE (DESIGN.md §1): the judge worker. Each next state is judged m times into votes and
//! candidate hints; SELECT and SAMPLE follow, and the votes, hints and sample are stored with
//! the next state marked judged in one transaction. A slow judge never stalls serving.

use std::sync::Arc;
use std::time::Duration;

use clawrl_signals::{Judge, JudgeInput, RulesJudge, Verdict, user_text};
use clawrl_store::{Judgement, NextKind, NextState, TurnType};
use tracing::{Instrument, info, info_span, warn};

use crate::error::Result;
use crate::events::Event;
use crate::sample::judge_turn;
use crate::select::messages_of;
use crate::{Component, Loop};

/// Runs until aborted: judges pending next states as they arrive, oldest first; a failure is
/// logged and retried later.
pub async fn run(lp: Arc<Loop>) {
    loop {
        let pending = match lp.store.unjudged(16).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "reading next states");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if pending.is_empty() {
            tokio::select! {
                _ = lp.judge_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            continue;
        }
        for ns in pending {
            let span = info_span!("judge", turn_id = ns.turn_id, next_state = ns.id);
            match judge_one(&lp, &ns).instrument(span).await {
                Ok(()) => lp.resolve(Component::Judge),
                Err(e) => {
                    warn!(turn_id = ns.turn_id, error = %e, "judging failed; retrying later");
                    lp.report(
                        Component::Judge,
                        format!(
                            "judging failed ({e}); next states are kept and judged again every few seconds"
                        ),
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// Asks `judge` `m` times about one action (on a blocking thread: judges may run a model).
async fn verdicts(
    judge: Arc<dyn Judge>,
    m: usize,
    turn: &clawrl_store::Turn,
    ns: &NextState,
) -> Result<Vec<Verdict>> {
    // Judges read what the user typed, without the client's wrappers (timestamps, channel
    // envelopes, runtime lines); the store keeps the text as sent.
    let messages: Vec<_> = messages_of(turn)?
        .into_iter()
        .map(|mut m| {
            if m.role == "user" {
                m.content = user_text(&m.content);
            }
            m
        })
        .collect();
    let next = match ns.kind {
        NextKind::Reply => user_text(&ns.text),
        NextKind::Feedback | NextKind::Tool => ns.text.clone(),
    };
    let (response, kind) = (turn.response.clone(), ns.kind);
    let votes = tokio::task::spawn_blocking(move || {
        let input = JudgeInput {
            conversation: &messages,
            response: &response,
            next_state: &next,
            kind,
        };
        (0..m)
            .map(|_| judge.judge(&input))
            .collect::<std::result::Result<Vec<_>, _>>()
    })
    .await??;
    Ok(votes)
}

/// Judges one next state and stores what it yields.
async fn judge_one(lp: &Loop, ns: &NextState) -> Result<()> {
    let turn = lp.store.turn(ns.turn_id).await?;
    if turn.turn_type == TurnType::Side {
        // Side turns are served, never trained on.
        lp.store
            .record_judgement(ns.id, turn.id, &Judgement::default())
            .await?;
        return Ok(());
    }
    // Explicit feedback means what it says: the rules judge reads it exactly.
    let (judge, m): (Arc<dyn Judge>, usize) = if ns.kind == NextKind::Feedback {
        (Arc::new(RulesJudge), 1)
    } else {
        (lp.judge.clone(), lp.votes)
    };
    let name = judge.name().to_string();
    let verdicts = verdicts(judge, m, &turn, ns).await?;
    let judged = judge_turn(lp, &turn, &name, &verdicts).await?;
    let sample_id = lp
        .store
        .record_judgement(ns.id, turn.id, &judged.judgement)
        .await?;
    info!(
        reward = judged.reward,
        candidates = judged.candidates.len(),
        used = ?judged.used,
        ?sample_id,
        "judged"
    );
    lp.emit(Event::Judged {
        turn_id: turn.id,
        reward: judged.reward,
        hints: judged.candidates,
        used: judged.used,
        sample_id,
    });
    if let Some(sample_id) = sample_id {
        let pending = lp.store.count_pending().await?;
        lp.emit(Event::Sample {
            sample_id,
            turn_id: turn.id,
            pending,
        });
        lp.wake_trainer();
    }
    Ok(())
}
