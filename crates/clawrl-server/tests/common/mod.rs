//! A real server on an ephemeral port with a real SQLite file and the tiny model.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clawrl_model::Model;
use clawrl_server::{Server, ServerConfig};
use serde_json::{Value, json};

/// A running test server.
pub struct TestServer {
    pub server: Server,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub key: Option<String>,
}

pub fn config(dir: &std::path::Path) -> ServerConfig {
    let mut c = ServerConfig::new("tiny", dir);
    c.bind = "127.0.0.1:0".parse().expect("addr");
    c.lp.training.batch_size = 2;
    c.lp.training.lr = 1e-2;
    c.lp.lora.rank = 4;
    c.lp.lora.alpha = 8.0;
    c
}

pub async fn start_with(
    dir: tempfile::TempDir,
    edit: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    let mut c = config(dir.path());
    edit(&mut c);
    let key = c.owner_key.clone();
    let server = clawrl_server::start(c, Arc::new(Model::tiny(7)))
        .await
        .expect("server starts");
    TestServer {
        url: format!("http://{}", server.addr),
        server,
        dir,
        http: reqwest::Client::new(),
        key,
    }
}

pub async fn start() -> TestServer {
    start_with(tempfile::tempdir().expect("tempdir"), |_| {}).await
}

impl TestServer {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, format!("{}{path}", self.url));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A non-streamed chat turn; returns the response body.
    pub async fn chat(&self, session: &str, messages: Value) -> Value {
        let (status, body) = self
            .post(
                "/v1/chat/completions",
                &json!({"model": "tiny", "messages": messages, "max_tokens": 12, "session_id": session, "seed": 1}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls `path` until `done` holds (up to 60 s).
    pub async fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let (_, v) = self.get(path).await;
            if done(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "timed out waiting on {path}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.server.shutdown().await;
        self.dir
    }
}

/// A user message.
pub fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// An assistant message.
pub fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

/// The text of a chat completion's first choice ("" when it has none).
pub fn content(completion: &Value) -> String {
    completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
