//! Faults, each on the real `clawrl` binary with the embedded model: SIGKILL in the middle of
//! a training step, a checkpoint that cannot be read at start, a checkpoint write that fails
//! (a full disk), an unreachable judge, a database locked by another process. Each time the
//! server keeps serving, loses nothing it acknowledged, and says what happened (`/healthz`).
//! Slow: each trains a step or two (about 30 s apiece).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `clawrl serve`, killed when dropped (a failing test leaves no server behind).
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn serve(dir: &Path) -> Serve {
    serve_with(dir, &[], None)
}

/// `clawrl serve` on `dir`'s database with `extra` flags; under `limit_fsize` (bytes), every
/// file it writes stops growing there, as on a full disk (the write fails with EFBIG).
fn serve_with(dir: &Path, extra: &[&str], limit_fsize: Option<u64>) -> Serve {
    let port = free_port();
    let bin = env!("CARGO_BIN_EXE_clawrl");
    let mut cmd = match limit_fsize {
        // SIGXFSZ ignored, so that the write fails instead of killing the server; the soft
        // limit only, so that `prlimit` can lift it again.
        Some(bytes) => {
            let mut c = Command::new("bash");
            c.args([
                "-c",
                &format!(
                    "trap '' XFSZ; ulimit -S -f {}; exec \"$0\" \"$@\"",
                    bytes / 1024
                ),
                bin,
            ]);
            c
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
        ])
        .args(extra)
        .arg("--db")
        .arg(dir.join("clawrl.sqlite"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("clawrl serve starts");
    let s = Serve {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let t0 = Instant::now();
    while reqwest::blocking::get(format!("{}/healthz", s.url)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the server did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s
}

impl Serve {
    fn get(&self, path: &str) -> Value {
        reqwest::blocking::get(format!("{}{path}", self.url))
            .and_then(|r| r.json())
            .expect("GET")
    }

    fn chat(&self, session: &str, messages: Value) -> Value {
        let (status, body) = self.try_chat(session, messages);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A chat request's status and body, whatever they are.
    fn try_chat(&self, session: &str, messages: Value) -> (u16, Value) {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .and_then(|c| {
                c.post(format!("{}/v1/chat/completions", self.url))
                    .json(&json!({"messages": messages, "max_tokens": 24, "session_id": session, "temperature": 0}))
                    .send()
            })
            .expect("chat");
        (r.status().as_u16(), r.json().expect("json"))
    }

    /// The failing components `/healthz` lists, by name.
    fn problems(&self) -> Vec<String> {
        let h = self.get("/healthz");
        let problems: Vec<String> = h["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .filter_map(|p| p["component"].as_str().map(str::to_string))
            .collect();
        assert_eq!(h["status"] == "ok", problems.is_empty(), "{h}");
        problems
    }

    /// A session whose answer the user corrects: an RL and an OPD sample.
    fn corrected(&self, session: &str, question: &str) {
        let first = self.chat(session, json!([{"role": "user", "content": question}]));
        let answer = first["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        self.chat(
            session,
            json!([
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "No, answer in one short sentence."}
            ]),
        );
    }

    fn wait(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get(path);
            if done(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "timed out on {path}: {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Everything the store acknowledged, turn by turn.
    fn record(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let sessions = self.get("/studio/sessions?limit=1000");
        for s in sessions["sessions"].as_array().expect("sessions") {
            let id = s["id"].as_str().expect("id");
            let session = self.get(&format!("/studio/sessions/{id}"));
            for t in session["turns"].as_array().expect("turns") {
                let turn = self.get(&format!("/studio/turns/{}", t["id"]));
                let samples: Vec<Value> = turn["samples"]
                    .as_array()
                    .expect("samples")
                    .iter()
                    .map(|s| json!([s["id"], s["advantage"], s["hint_id"]]))
                    .collect();
                out.push(json!({
                    "turn": turn["turn"]["id"],
                    "response": turn["turn"]["response"],
                    "tokens": turn["tokens"],
                    "next_states": turn["next_states"],
                    "votes": turn["votes"],
                    "hints": turn["hints"].as_array().expect("hints").iter().map(|h| json!([h["id"], h["text"]])).collect::<Vec<_>>(),
                    "samples": samples,
                }));
            }
        }
        out
    }
}

/// Waits for the first `train_started` event on the Studio's event stream.
fn on_train_started(url: &str) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let resp = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .and_then(|c| c.get(format!("{url}/studio/events")).send())
        .expect("event stream");
    std::thread::spawn(move || {
        for line in BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            if line == "event: train_started" {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx
}

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
