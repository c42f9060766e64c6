//! SIGKILL in the middle of a training step, then a restart on the same files: every
//! acknowledged turn, vote, hint and sample is there, and training goes on from the last
//! checkpoint. Runs the real `clawrl` binary with the embedded model (slow: ~30 s).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Serve {
    child: Child,
    url: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn serve(dir: &Path) -> Serve {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_clawrl"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
        ])
        .arg("--db")
        .arg(dir.join("clawrl.sqlite"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("clawrl serve starts");
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while reqwest::blocking::get(format!("{url}/healthz")).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the server did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Serve { child, url }
}

impl Serve {
    fn get(&self, path: &str) -> Value {
        reqwest::blocking::get(format!("{}{path}", self.url))
            .and_then(|r| r.json())
            .expect("GET")
    }

    fn chat(&self, session: &str, messages: Value) -> Value {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&json!({"messages": messages, "max_tokens": 24, "session_id": session, "temperature": 0}))
            .send()
            .expect("chat");
        assert_eq!(r.status(), 200);
        r.json().expect("json")
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
    let Serve { mut child, .. } = s;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

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
    let Serve { mut child, .. } = s;
    child.kill().expect("stop");
    child.wait().expect("reaped");
}
