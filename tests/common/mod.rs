//! A real `clawrl serve` (the embedded model, its own data directory) for the end-to-end
//! tests, and what they ask of it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `clawrl serve`, killed when dropped (a failing test leaves no server behind).
pub struct Serve {
    pub child: Child,
    pub url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn serve(dir: &Path) -> Serve {
    serve_with(dir, &[], None)
}

/// `clawrl serve` on `dir`'s database with `extra` flags; under `limit_fsize` (bytes), every
/// file it writes stops growing there, as on a full disk (the write fails with EFBIG).
pub fn serve_with(dir: &Path, extra: &[&str], limit_fsize: Option<u64>) -> Serve {
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
    pub fn get(&self, path: &str) -> Value {
        reqwest::blocking::get(format!("{}{path}", self.url))
            .and_then(|r| r.json())
            .expect("GET")
    }

    pub fn chat(&self, session: &str, messages: Value) -> Value {
        let (status, body) = self.try_chat(session, messages);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A chat request's status and body, whatever they are.
    pub fn try_chat(&self, session: &str, messages: Value) -> (u16, Value) {
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
    pub fn problems(&self) -> Vec<String> {
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
    pub fn corrected(&self, session: &str, question: &str) {
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

    pub fn wait(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
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
    pub fn record(&self) -> Vec<Value> {
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
pub fn on_train_started(url: &str) -> mpsc::Receiver<()> {
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
