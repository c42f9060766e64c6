//! The store on a real SQLite file: pairing, judgements, samples, steps, keys, concurrency and
//! a reopen.

use clawrl_objective::{Selection, SelectionMode};
use clawrl_store::{
    HintRef, HintSource, HintStatus, Judgement, NewHint, NewOpd, NewSample, NewTurn, NewVersion,
    NextKind, Role, Store, TeacherPlan, TurnType, Vote,
};
use serde_json::json;

fn turn(session: &str, turn_type: TurnType) -> NewTurn {
    NewTurn {
        session_id: session.into(),
        turn_type,
        messages: json!([{"role": "user", "content": "hi"}]),
        prompt_ids: vec![1, 2, 3],
        response: "hello".into(),
        response_ids: vec![4, 5],
        logprobs: vec![-0.5, -1.5],
        top_logprobs: vec![vec![(4, -0.5)], vec![(5, -1.5)]],
        tools: Some(json!([{"type": "function", "function": {"name": "calc"}}])),
        dropped_messages: 0,
        continuation: format!("{session}-key"),
        policy_version: 0,
        finish_reason: "stop".into(),
        key_id: None,
    }
}

#[tokio::test]
async fn the_loop_s_records_round_trip_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("nested/clawrl.sqlite");
    let store = Store::open(&path).await.expect("opens");

    // No earlier turn: nothing to pair.
    assert_eq!(
        store
            .pair_next_state("s", NextKind::Reply, "x", None)
            .await
            .expect("pair"),
        None
    );
    let t1 = store
        .record_turn(&turn("s", TurnType::Main))
        .await
        .expect("turn");
    let side = store
        .record_turn(&turn("s", TurnType::Side))
        .await
        .expect("turn");
    // The next main-line request pairs with the last main turn, not the side turn.
    let (paired, ns) = store
        .pair_next_state("s", NextKind::Reply, "no, shorter", None)
        .await
        .expect("pair")
        .expect("paired");
    assert_eq!(paired, t1);
    assert_ne!(paired, side);
    // Once paired, a turn takes no second reply.
    assert_eq!(
        store
            .pair_next_state("s", NextKind::Reply, "again", None)
            .await
            .expect("pair"),
        None
    );
    let stored = store.turn(t1).await.expect("turn");
    assert_eq!(stored.response_ids.0, vec![4, 5]);
    assert_eq!(stored.logprobs.0, vec![-0.5, -1.5]);

    let pending = store.unjudged(10).await.expect("unjudged");
    assert_eq!(pending.len(), 1);
    let j = Judgement {
        votes: vec![
            Vote {
                judge: "rules".into(),
                value: Some(-1),
                raw: "rules: correction".into(),
                key_id: None,
            },
            Vote {
                judge: "model".into(),
                value: None,
                raw: "I cannot tell.".into(),
                key_id: None,
            },
        ],
        hints: vec![
            NewHint {
                text: "Be shorter.".into(),
                source: HintSource::Judge,
                author: "rules".into(),
                overlap: Some(7),
                status: HintStatus::Accepted,
                key_id: None,
            },
            NewHint {
                text: "Other.".into(),
                source: HintSource::Judge,
                author: "rules".into(),
                overlap: Some(3),
                status: HintStatus::Candidate,
                key_id: None,
            },
        ],
        sample: Some(NewSample {
            turn_id: t1,
            advantage: Some(-1.0),
            opd: Some(NewOpd {
                candidates: vec![HintRef::New(0), HintRef::New(1)],
                prompts: vec![vec![1, 2, 3, 9], vec![1, 2, 3, 8]],
                // Token mode: hint 1 teaches position 0, hint 0 position 1.
                selection: Selection {
                    mode: SelectionMode::Token,
                    per_position: vec![1, 0],
                    totals: vec![7, 3],
                },
                k: 4,
                overlap: vec![vec![3, 4], vec![3, 0]],
            }),
            retry_of: None,
        }),
    };
    let sample = store
        .record_judgement(ns, t1, &j)
        .await
        .expect("judged")
        .expect("sample");
    assert!(store.unjudged(10).await.expect("unjudged").is_empty());
    let hints = store.hints_of(t1).await.expect("hints");
    let samples = store.pending_samples(10).await.expect("samples");
    assert_eq!(samples.len(), 1);
    // Two hints teach: there is no single h*.
    assert_eq!(samples[0].hint_id, None);
    assert_eq!(samples[0].prompt_ids, vec![1, 2, 3]);
    assert_eq!(
        samples[0].teacher,
        Some(TeacherPlan {
            prompts: vec![vec![1, 2, 3, 9], vec![1, 2, 3, 8]],
            per_position: vec![1, 0],
        })
    );
    let record = samples[0].selection.clone().expect("selection");
    assert_eq!(record.hint_ids, vec![hints[0].id, hints[1].id]);
    assert_eq!(record.selection.mode, SelectionMode::Token);
    assert_eq!(
        store.continued_turn("s-key").await.expect("lookup"),
        Some((t1, "s".to_string())),
        "the latest main turn with the key (not the side turn after it)"
    );
    assert_eq!(store.continued_turn("nope").await.expect("lookup"), None);
    assert_eq!(
        store.turn(t1).await.expect("turn").tools.map(|t| t.0),
        Some(json!([{"type": "function", "function": {"name": "calc"}}]))
    );

    // Rejecting a hint that teaches one position drops the sample.
    store.reject_hint(hints[1].id).await.expect("reject");
    assert_eq!(store.count_pending().await.expect("count"), 0);

    // Accepting a hint makes it the turn's directive part: no sample is pending, so a new one.
    let only_first = NewOpd {
        candidates: vec![HintRef::Stored(hints[0].id)],
        prompts: vec![vec![1, 2, 3, 9]],
        selection: Selection {
            mode: SelectionMode::Sequence,
            per_position: vec![0, 0],
            totals: vec![7],
        },
        k: 4,
        overlap: vec![vec![3, 4]],
    };
    let accepted = store
        .accept_hint(hints[0].id, t1, &only_first)
        .await
        .expect("accept");
    assert_ne!(accepted, sample);
    // A second accept updates the pending sample instead of adding one: one OPD sample a turn.
    assert_eq!(
        store
            .accept_hint(hints[0].id, t1, &only_first)
            .await
            .expect("accept again"),
        accepted
    );
    assert_eq!(store.count_pending().await.expect("count"), 1);
    let pending = store.pending_samples(10).await.expect("samples");
    assert_eq!(pending[0].hint_id, Some(hints[0].id));
    assert!(
        store
            .accept_hint(hints[0].id, t1 + 1, &only_first)
            .await
            .is_err()
    );

    store
        .record_step(
            &version(1, 0, 1),
            &json!({"loss": 0.5}),
            2.0,
            &[(accepted, None)],
        )
        .await
        .expect("step");
    assert_eq!(store.count_pending().await.expect("count"), 0);
    assert_eq!(store.versions().await.expect("versions").len(), 2);
    assert!(store.reject_hint(999).await.is_err());

    let owner = store
        .add_key("owner", "secret-key-0123456789", Role::Owner)
        .await
        .expect("key");
    assert_eq!(
        store.key_role("secret-key-0123456789").await.expect("role"),
        Some((owner, "owner".into(), Role::Owner))
    );
    assert_eq!(store.key_role("nope").await.expect("role"), None);
    drop(store);

    let store = Store::open(&path).await.expect("reopens");
    let c = store.counts().await.expect("counts");
    assert_eq!(
        (c.sessions, c.turns, c.votes, c.hints, c.samples, c.steps),
        (1, 2, 2, 2, 2, 1)
    );
    assert_eq!(
        store.steps(0, 10).await.expect("steps")[0].metrics.0["loss"],
        0.5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_queue_instead_of_failing() {
    let (_dir, store) = fresh_store().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let session = format!("s{}", i % 4);
            for _ in 0..5 {
                store
                    .pair_next_state(&session, NextKind::Reply, "thanks", None)
                    .await?;
                store.record_turn(&turn(&session, TurnType::Main)).await?;
            }
            Ok::<_, clawrl_store::Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("no write failed");
    }
    let c = store.counts().await.expect("counts");
    assert_eq!(c.turns, 80);
    // However the writers interleaved, no turn got two next states.
    let paired: Vec<i64> = store
        .unjudged(1000)
        .await
        .expect("unjudged")
        .iter()
        .map(|n| n.turn_id)
        .collect();
    let distinct: std::collections::BTreeSet<_> = paired.iter().collect();
    assert_eq!(distinct.len(), paired.len());
    assert!(!paired.is_empty() && paired.len() <= 76);
}

/// A judgement of one vote (a correction's hint with a −1), with an RL sample for `turn_id`
/// retrying `retry_of`.
fn vote(turn_id: i64, value: i64, retry_of: Option<i64>) -> Judgement {
    Judgement {
        votes: vec![Vote {
            judge: "rules".into(),
            value: Some(value),
            raw: "rules".into(),
            key_id: None,
        }],
        hints: if value < 0 {
            vec![NewHint {
                text: "no".into(),
                source: HintSource::Judge,
                author: "rules".into(),
                overlap: None,
                status: HintStatus::Candidate,
                key_id: None,
            }]
        } else {
            Vec::new()
        },
        sample: Some(NewSample {
            turn_id,
            advantage: Some(value as f64),
            opd: None,
            retry_of,
        }),
    }
}

#[tokio::test]
async fn an_accepted_retry_finds_the_original_prompt_and_trains_under_it() {
    let (_dir, store) = fresh_store().await;
    let mut ids = Vec::new();
    for (i, prompt) in [vec![1, 2], vec![1, 2, 7], vec![1, 2, 7, 8]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            let (_, ns) = store
                .pair_next_state("s", NextKind::Reply, "no", None)
                .await
                .expect("pair")
                .expect("paired");
            store
                .record_judgement(ns, ids[i - 1], &vote(ids[i - 1], -1, None))
                .await
                .expect("judged");
        }
        let mut t = turn("s", TurnType::Main);
        t.prompt_ids = prompt;
        t.continuation = format!("k{i}");
        ids.push(store.record_turn(&t).await.expect("turn"));
    }
    // Two rejected answers, then the third: its retry is of the first, the original s_t.
    assert_eq!(
        store.retried_turn(ids[2]).await.expect("query"),
        Some(ids[0])
    );
    assert_eq!(
        store.retried_turn(ids[1]).await.expect("query"),
        Some(ids[0])
    );
    assert_eq!(store.retried_turn(ids[0]).await.expect("query"), None);
    let (_, ns) = store
        .pair_next_state("s", NextKind::Reply, "thanks", None)
        .await
        .expect("pair")
        .expect("paired");
    store
        .record_judgement(ns, ids[2], &vote(ids[2], 1, Some(ids[0])))
        .await
        .expect("judged");
    let samples = store.samples_of(ids[2]).await.expect("samples");
    assert_eq!(samples[0].retry_of, Some(ids[0]));
    assert_eq!(samples[0].retry_prompt_ids, Some(vec![1, 2]));
    assert_eq!(samples[0].prompt_ids, vec![1, 2, 7, 8]);
    // A turn after an accepted one retried nothing.
    let mut t = turn("s", TurnType::Main);
    t.continuation = "k3".into();
    let later = store.record_turn(&t).await.expect("turn");
    assert_eq!(store.retried_turn(later).await.expect("query"), None);
    // A later thumbs-down takes the retry away from the still-pending sample.
    let (_, ns) = store
        .pair_next_state("s", NextKind::Reply, "actually no", None)
        .await
        .expect("pair")
        .expect("paired");
    store
        .record_judgement(ns, ids[2], &vote(ids[2], -1, None))
        .await
        .expect("judged");
    let samples = store.samples_of(ids[2]).await.expect("samples");
    assert_eq!(samples[0].retry_of, None);
    // The curve of first answers: the session's first turn, rejected.
    let first = store.first_answers(10).await.expect("first answers");
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].turn_id, first[0].reward), (ids[0], Some(-1)));
}

/// A store in a new temporary directory, which lives as long as the returned guard.
async fn fresh_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("db.sqlite"))
        .await
        .expect("opens");
    (dir, store)
}

/// Version `version`, continued from `parent`, made at optimizer step `step`.
fn version(version: i64, parent: i64, step: i64) -> NewVersion<'static> {
    NewVersion {
        version,
        parent,
        step,
        checkpoint: "/tmp/v",
    }
}

/// A main turn of session `s` with `prompt`, then the user's `reply` to it judged `value`
/// (an RL sample retrying `retry_of`); the turn's id.
async fn answer_judged(
    store: &Store,
    prompt: Vec<u32>,
    continuation: &str,
    (reply, value): (&str, i64),
    retry_of: Option<i64>,
) -> i64 {
    let mut t = turn("s", TurnType::Main);
    t.prompt_ids = prompt;
    t.continuation = continuation.into();
    let id = store.record_turn(&t).await.expect("turn");
    let (_, ns) = store
        .pair_next_state("s", NextKind::Reply, reply, None)
        .await
        .expect("pair")
        .expect("paired");
    store
        .record_judgement(ns, id, &vote(id, value, retry_of))
        .await
        .expect("judged");
    id
}

#[tokio::test]
async fn trained_accepted_retries_are_the_pool_retry_replay_draws_from() {
    let (_dir, store) = fresh_store().await;
    // A rejected answer, then an accepted one that retried it.
    let first = answer_judged(&store, vec![1, 2], "k0", ("no", -1), None).await;
    let retry = answer_judged(&store, vec![1, 2, 7], "k1", ("thanks", 1), Some(first)).await;
    // Pending samples are not replayed: only what a step trained.
    assert!(store.trained_retry_ids(0).await.expect("ids").is_empty());
    let pending = store.pending_samples(10).await.expect("pending");
    assert_eq!(pending.len(), 2);
    let marks: Vec<(i64, Option<f64>)> = pending.iter().map(|s| (s.id, None)).collect();
    store
        .record_step(&version(1, 0, 1), &serde_json::json!({}), 0.1, &marks)
        .await
        .expect("step");
    let ids = store.trained_retry_ids(1).await.expect("ids");
    let accepted = pending
        .iter()
        .find(|s| s.turn_id == retry)
        .expect("the retry's sample");
    assert_eq!(ids, vec![accepted.id]);
    let back = store.samples_by_id(&ids).await.expect("samples");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].retry_prompt_ids, Some(vec![1, 2]));
    assert_eq!(back[0].response_ids, accepted.response_ids);

    // A second retry trains v2 (step 2); then v1 is rolled back to and the next step (step 2
    // again) makes v3: v2's retry is not v3's to replay.
    let rejected = answer_judged(&store, vec![1, 2, 7, 9], "k2", ("no", -1), None).await;
    answer_judged(
        &store,
        vec![1, 2, 7, 9, 4],
        "k3",
        ("thanks", 1),
        Some(rejected),
    )
    .await;
    let pending = store.pending_samples(10).await.expect("pending");
    let marks: Vec<(i64, Option<f64>)> = pending.iter().map(|s| (s.id, None)).collect();
    store
        .record_step(&version(2, 1, 2), &serde_json::json!({}), 0.1, &marks)
        .await
        .expect("step");
    store
        .record_step(&version(3, 1, 2), &serde_json::json!({}), 0.1, &[])
        .await
        .expect("step");
    assert_eq!(store.lineage(3).await.expect("lineage"), vec![3, 1, 0]);
    assert_eq!(store.lineage(2).await.expect("lineage"), vec![2, 1, 0]);
    assert!(store.lineage(9).await.expect("lineage").is_empty());
    let both = store.trained_retry_ids(2).await.expect("ids");
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], accepted.id);
    assert_eq!(
        store.trained_retry_ids(3).await.expect("ids"),
        vec![accepted.id]
    );
    assert!(store.samples_by_id(&[]).await.expect("no ids").is_empty());
    assert!(
        store
            .samples_by_id(&[ids[0] + 1000])
            .await
            .expect("unknown id")
            .is_empty()
    );
}

#[tokio::test]
async fn replay_follows_the_recorded_parents_and_a_turns_newest_vote() {
    let (_dir, store) = fresh_store().await;
    let step = |v: NewVersion<'static>| {
        let store = &store;
        async move {
            let marks: Vec<(i64, Option<f64>)> = store
                .pending_samples(10)
                .await
                .expect("pending")
                .iter()
                .map(|s| (s.id, None))
                .collect();
            store
                .record_step(&v, &serde_json::json!({}), 0.1, &marks)
                .await
                .expect("step");
        }
    };
    // v1 trains retry a; v2 follows it. Roll back to the base: v3 trains retry b, v4 follows
    // it. Roll back to v1: v5 (step 2, as v2 and v4) continues from v1.
    let first = answer_judged(&store, vec![1], "k0", ("no", -1), None).await;
    let a = answer_judged(&store, vec![1, 2], "k1", ("thanks", 1), Some(first)).await;
    step(version(1, 0, 1)).await;
    step(version(2, 1, 2)).await;
    let first = answer_judged(&store, vec![3], "k2", ("no", -1), None).await;
    let b = answer_judged(&store, vec![3, 4], "k3", ("thanks", 1), Some(first)).await;
    step(version(3, 0, 1)).await;
    step(version(4, 3, 2)).await;
    step(version(5, 1, 2)).await;
    assert_eq!(store.lineage(5).await.expect("lineage"), vec![5, 1, 0]);
    assert_eq!(store.lineage(4).await.expect("lineage"), vec![4, 3, 0]);
    let parents: Vec<Option<i64>> = store
        .versions()
        .await
        .expect("versions")
        .iter()
        .map(|v| v.parent)
        .collect();
    assert_eq!(
        parents,
        vec![None, Some(0), Some(1), Some(0), Some(3), Some(1)]
    );
    let turn_of = |ids: Vec<i64>| {
        let store = &store;
        async move {
            let samples = store.samples_by_id(&ids).await.expect("samples");
            samples.iter().map(|s| s.turn_id).collect::<Vec<i64>>()
        }
    };
    assert_eq!(
        turn_of(store.trained_retry_ids(5).await.expect("ids")).await,
        vec![a]
    );
    assert_eq!(
        turn_of(store.trained_retry_ids(4).await.expect("ids")).await,
        vec![b]
    );

    // A later thumbs down on a's answer: the newest vote is the turn's word, so its accepted
    // retry leaves the pool (its new sample, pending, is not in it either).
    let ns = store
        .record_feedback(a, Some(-1), None, "owner", None)
        .await
        .expect("feedback");
    store
        .record_judgement(ns, a, &vote(a, -1, None))
        .await
        .expect("judged");
    assert!(store.trained_retry_ids(5).await.expect("ids").is_empty());
    assert_eq!(
        turn_of(store.trained_retry_ids(4).await.expect("ids")).await,
        vec![b]
    );
}
