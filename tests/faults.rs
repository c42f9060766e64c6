//! Faults, each on the real `clawrl` binary with the embedded model: SIGKILL in the middle of
//! a training step, a checkpoint that cannot be read at start, a checkpoint write that fails
//! (a full disk), an unreachable judge, a database locked by another process. Each time the
//! server keeps serving, loses nothing it acknowledged, and says what happened (`/healthz`).
//! Slow: each trains a step or two (about 30 s apiece).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, on_train_started, serve, serve_with};
use serde_json::json;

#[test]
fn sigkill_mid_step_loses_nothing_and_training_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().expect("dir");
    let s = serve(dir.path());
    // The embedded model's card sampling is what requests without one get.
    let models = s.get("/v1/models");
    let sampling = &models["data"][0]["sampling_defaults"];
    assert_eq!(
        (&sampling["temperature"], &sampling["source"]),
        (&json!(0.2), &json!("known_model")),
        "{models}"
    );
    assert_eq!(models["data"][0]["context_length"], 8192);
    // One whole step first, so there is a checkpoint (version 1) to resume from.
    s.corrected("a", "What is the capital of France?");
    s.corrected("b", "Which animal says moo?");
    s.wait("/studio/training", |v| v["policy_version"] == 1);

    // A second batch; kill the server while it trains on it.
    let started = on_train_started(&s.url);
    s.corrected("c", "Name a yellow fruit.");
    s.corrected("d", "What colour is the sky?");
    started
        .recv_timeout(Duration::from_secs(180))
        .expect("a training step starts");
    std::thread::sleep(Duration::from_millis(300));
    let before = s.record();
    drop(s); // SIGKILL

    let s = serve(dir.path());
    let status = s.get("/studio/training");
    assert_eq!(
        status["policy_version"], 1,
        "resumed from the last checkpoint: {status}"
    );
    assert_eq!(status["steps"], 1);
    assert_eq!(
        status["pending_samples"], 2,
        "the interrupted batch is still pending"
    );
    assert_eq!(s.record(), before, "everything acknowledged survived");
    // Training goes on: the interrupted batch trains into version 2.
    s.wait("/studio/training", |v| {
        v["policy_version"] == 2 && v["pending_samples"] == 0
    });
    let after = s.chat("e", json!([{"role": "user", "content": "Hello"}]));
    assert_eq!(after["policy_version"], 2);
    assert!(s.problems().is_empty());
}

#[test]
fn a_checkpoint_that_cannot_be_read_at_start_gives_way_to_the_version_before_it() {
    let dir = tempfile::tempdir().expect("dir");
    let s = serve(dir.path());
    s.corrected("a", "What is the capital of France?");
    s.corrected("b", "Which animal says moo?");
    s.wait("/studio/training", |v| v["policy_version"] == 1);
    let before = s.record();
    drop(s);
    let weights = dir.path().join("checkpoints/v1/adapter_model.safetensors");
    std::fs::write(&weights, b"not safetensors").expect("corrupt the checkpoint");

    let s = serve(dir.path());
    assert_eq!(s.problems(), ["checkpoint"]);
    let health = s.get("/healthz");
    let message = health["problems"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("v1") && message.contains("serving v0"),
        "{health}"
    );
    assert_eq!(health["policy_version"], 0);
    assert_eq!(s.record(), before, "everything acknowledged survived");
    let answer = s.chat("c", json!([{"role": "user", "content": "Hello"}]));
    assert_eq!(answer["policy_version"], 0);
    // Training continues from the version that serves, into a new version.
    s.corrected("d", "Name a yellow fruit.");
    s.corrected("e", "What colour is the sky?");
    s.wait("/studio/training", |v| v["policy_version"] == 2);
    assert!(
        s.problems().is_empty(),
        "a new checkpoint supersedes the report"
    );
}

#[test]
fn a_checkpoint_write_that_fails_pauses_training_and_keeps_its_samples() {
    let dir = tempfile::tempdir().expect("dir");
    // The adapter alone is ~10 MB; the database stays far below 6 MB.
    let s = serve_with(dir.path(), &[], Some(6 << 20));
    s.corrected("a", "What is the capital of France?");
    s.corrected("b", "Which animal says moo?");
    let status = s.wait("/studio/training", |v| v["settings"]["paused"] == true);
    assert_eq!(status["policy_version"], 0, "{status}");
    assert_eq!(status["pending_samples"], 2, "{status}");
    assert_eq!(s.problems(), ["training"]);
    assert!(
        !dir.path().join("checkpoints/v1").exists(),
        "a half-written checkpoint is removed"
    );
    let answer = s.chat("c", json!([{"role": "user", "content": "Hello"}]));
    assert_eq!(answer["policy_version"], 0);

    // Space again, then resume: the same samples train into version 1.
    let pid = s.child.id().to_string();
    let freed = Command::new("prlimit")
        .args(["--pid", &pid, "--fsize=unlimited:"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(freed.success());
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/studio/training/settings", s.url))
        .json(&json!({"paused": false}))
        .send()
        .expect("resume");
    assert_eq!(r.status(), 200);
    s.wait("/studio/training", |v| {
        v["policy_version"] == 1 && v["pending_samples"] == 0
    });
    assert!(s.problems().is_empty());
}

#[test]
fn an_unreachable_judge_keeps_next_states_until_it_answers() {
    let dir = tempfile::tempdir().expect("dir");
    let nowhere = format!("http://127.0.0.1:{}/v1", free_port());
    let s = serve_with(
        dir.path(),
        &[
            "--judge",
            "http",
            "--judge-url",
            &nowhere,
            "--judge-model",
            "judge",
        ],
        None,
    );
    s.corrected("a", "What is the capital of France?");
    let t0 = Instant::now();
    while s.problems().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no judge problem reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.problems(), ["judge"]);
    let record = s.record();
    let first = &record[0];
    assert_eq!(
        first["next_states"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    assert_eq!(first["votes"], json!([]), "{first}");
    assert_eq!(s.get("/studio/training")["pending_samples"], 0);
    let answer = s.chat("b", json!([{"role": "user", "content": "Hello"}]));
    assert_eq!(answer["policy_version"], 0);
}

#[test]
fn a_database_locked_by_another_process_refuses_with_503_and_records_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let s = serve(dir.path());
    s.chat("a", json!([{"role": "user", "content": "Hello"}]));
    let before = s.record();
    // Another process takes the write lock and holds it past the server's busy timeout.
    let db = dir.path().join("clawrl.sqlite");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             sys.stdin.readline()\n\
             c.execute('COMMIT')",
        ])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the lock is held");
    assert_eq!(line.trim(), "locked");

    let (status, body) = s.try_chat("b", json!([{"role": "user", "content": "Are you there?"}]));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "database_locked", "{body}");
    assert!(
        s.get("/healthz")["status"].is_string(),
        "health answers while locked"
    );

    drop(holder.stdin.take()); // release
    holder.wait().expect("the holder ends");
    assert_eq!(s.record(), before, "the refused request recorded nothing");
    s.chat("b", json!([{"role": "user", "content": "Are you there?"}]));
    assert_eq!(s.record().len(), before.len() + 1);
}
