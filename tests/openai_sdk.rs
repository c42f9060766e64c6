//! The official `openai` Python package against the real server: chat, streaming, logprobs,
//! a session continued by header, and an error. The package lives in its own virtual
//! environment under the cache directory; the test creates it on first use (`.ci/run` does so
//! ahead of the tests).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawrl_model::Model;
use serde_json::Value;

const OPENAI: &str = "openai==3.51.0";

fn venv_python() -> PathBuf {
    let cache = std::env::var_os("CLAWRL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/clawrl")))
        .expect("CLAWRL_CACHE_DIR or HOME");
    let venv = cache.join("openai-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&python)
                .args(["-m", "pip", "install", "-q", OPENAI])
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "could not install {OPENAI} into {}", venv.display());
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_chats_streams_and_reads_logprobs() {
    let python = tokio::task::spawn_blocking(venv_python)
        .await
        .expect("venv");
    let dir = tempfile::tempdir().expect("dir");
    let mut config = clawrl_server::ServerConfig::new("tiny", dir.path());
    config.bind = "127.0.0.1:0".parse().expect("addr");
    config.lp.training.paused = true;
    let server = clawrl_server::start(config, Arc::new(Model::tiny(7)))
        .await
        .expect("server starts");
    let url = format!("http://{}", server.addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openai_sdk_check.py");
    let base = format!("{url}/v1");
    let out = tokio::process::Command::new(&python)
        .args([script, "--base-url", &base])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("summary");
    assert_eq!(summary["model"], "tiny");
    // The streamed reply was recorded as the session's second turn, with the first one's
    // next state ("Thanks!") paired to it.
    let get = |path: String| async move {
        reqwest::get(path)
            .await
            .expect("GET")
            .json::<Value>()
            .await
            .expect("JSON")
    };
    let session = get(format!("{url}/studio/sessions/sdk")).await;
    let turns = session["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1]["response"], summary["streamed_text"]);
    let first = turns[0]["id"].as_i64().expect("id");
    let t0 = Instant::now();
    let judged = loop {
        let v = get(format!("{url}/studio/turns/{first}")).await;
        if v["votes"].as_array().is_some_and(|v| !v.is_empty()) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "never judged: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(judged["next_states"][0]["text"], "Thanks!");
    assert_eq!(judged["votes"][0]["value"], 1);
    server.shutdown().await;
}
