//! Bad requests get a 4xx with an OpenAI error body and change nothing; keys and roles are
//! enforced.

mod common;

use common::{start, start_with, user};
use serde_json::{Value, json};

async fn raw(
    t: &common::TestServer,
    path: &str,
    body: &str,
    content_type: Option<&str>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", t.url))
        .body(body.to_string());
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    let r = r.send().await.expect("request");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn assert_openai_error(status: u16, body: &Value, expect: u16) {
    assert_eq!(status, expect, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert_eq!(e["code"], expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_write_nothing() {
    let t = start_with(tempfile::tempdir().expect("dir"), |c| {
        c.limits.max_body_bytes = 4096
    })
    .await;
    let chat = "/v1/chat/completions";
    let json_ct = Some("application/json");
    let cases: Vec<(&str, u16)> = vec![
        ("{not json", 400),
        (r#"{"messages": "hello"}"#, 400),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}"#,
            400,
        ),
        (r#"{"messages": []}"#, 400),
        (
            r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "top_p": 0}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 50}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "n": 2}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "turn_type": "tangent"}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            400,
        ),
        // A rollout's outcome comes with its end; a group id is 1 to 200 characters.
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "outcome": 1}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "session_done": true, "outcome": "won"}"#,
            400,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "group_id": ""}"#,
            400,
        ),
    ];
    for (body, expect) in cases {
        let (status, resp) = raw(&t, chat, body, json_ct).await;
        assert_openai_error(status, &resp, expect);
    }
    let big = json!({"messages": [user(&"x".repeat(10_000))]}).to_string();
    let (status, resp) = raw(&t, chat, &big, json_ct).await;
    assert_openai_error(status, &resp, 413);
    let (status, resp) = raw(&t, chat, r#"{"messages": []}"#, None).await;
    assert_openai_error(status, &resp, 415);
    // A context longer than the model's window: OpenAI's code (tests/clients.rs has more).
    let long = json!({"messages": [user(&"word ".repeat(700))]}).to_string();
    let (status, resp) = raw(&t, chat, &long, json_ct).await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["code"], "context_length_exceeded");
    let r = reqwest::Client::new()
        .post(format!("{}{chat}", t.url))
        .header("x-session-done", "maybe")
        .json(&json!({"messages": [user("hi")]}))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    assert_openai_error(status, &r.json().await.unwrap_or(Value::Null), 400);
    let (status, resp) = t.get("/v1/nothing").await;
    assert_openai_error(status, &resp, 404);

    // Studio inputs.
    let (status, resp) = t
        .post("/studio/turns/1/feedback", &json!({"thumb": -1}))
        .await;
    assert_openai_error(status, &resp, 404);
    let (status, resp) = t.post("/studio/hints/1/accept", &json!({})).await;
    assert_openai_error(status, &resp, 404);
    let (status, resp) = t
        .post("/studio/training/settings", &json!({"batch_size": 0}))
        .await;
    assert_openai_error(status, &resp, 400);
    let (status, resp) = t.get("/studio/sessions?limit=0").await;
    assert_openai_error(status, &resp, 400);
    let (status, resp) = t.get("/studio/turns/abc").await;
    assert_openai_error(status, &resp, 400);
    let (status, resp) = t.get("/studio/steps?after=x").await;
    assert_openai_error(status, &resp, 400);

    // Nothing was written.
    let (_, sessions) = t.get("/studio/sessions").await;
    assert_eq!(sessions["sessions"], json!([]));
    let (_, status) = t.get("/studio/training").await;
    assert_eq!(status["samples"], 0);

    // A good request still works, and bad feedback on it changes nothing.
    let ok = t.chat("s", json!([user("hi")])).await;
    let id = ok["turn_id"].as_i64().expect("id");
    for body in [
        json!({"thumb": 5}),
        json!({}),
        json!({"correction": "  "}),
        json!({"thumb": 1, "extra": 1}),
    ] {
        let (status, resp) = t.post(&format!("/studio/turns/{id}/feedback"), &body).await;
        assert_openai_error(status, &resp, 400);
    }
    let (status, resp) = t
        .post(&format!("/studio/turns/{id}/hints"), &json!({"text": ""}))
        .await;
    assert_openai_error(status, &resp, 400);
    let (_, turn) = t.get(&format!("/studio/turns/{id}")).await;
    assert_eq!(turn["next_states"], json!([]));
    assert_eq!(turn["hints"], json!([]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_roles_are_enforced() {
    let owner = "owner-key-0123456789";
    let t = start_with(tempfile::tempdir().expect("dir"), |c| {
        c.owner_key = Some(owner.into())
    })
    .await;
    let anon = reqwest::Client::new();
    let chat = json!({"messages": [user("hi")], "max_tokens": 4});
    let send = |key: Option<&str>, path: &str, body: Option<&Value>| {
        let mut r = match body {
            Some(b) => anon.post(format!("{}{path}", t.url)).json(b),
            None => anon.get(format!("{}{path}", t.url)),
        };
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let r = r.send().await.expect("request");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, _) = send(None, "/healthz", None).await;
    assert_eq!(status, 200, "health needs no key");
    // The document needs no key either, and says which operations take one.
    let (status, doc) = send(None, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let chat_op = &doc["paths"]["/v1/chat/completions"]["post"];
    assert_eq!(
        chat_op["security"],
        json!([{"bearer": []}, {"api_key": []}])
    );
    assert_eq!(
        chat_op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    let (status, body) = send(None, "/v1/chat/completions", Some(&chat)).await;
    assert_openai_error(status, &body, 401);
    let (status, body) = send(Some("wrong-key"), "/v1/models", None).await;
    assert_openai_error(status, &body, 401);

    // The owner makes a client and an annotator key.
    let (status, client) = send(
        Some(owner),
        "/studio/keys",
        Some(&json!({"name": "app", "role": "client"})),
    )
    .await;
    assert_eq!(status, 201, "{client}");
    let client = client["key"].as_str().expect("key").to_string();
    let (_, annot) = send(
        Some(owner),
        "/studio/keys",
        Some(&json!({"name": "ann", "role": "annotator"})),
    )
    .await;
    let annot = annot["key"].as_str().expect("key").to_string();
    let (status, _) = send(
        Some(owner),
        "/studio/keys",
        Some(&json!({"name": "x", "role": "god"})),
    )
    .await;
    assert_eq!(status, 400);

    let (status, body) = send(Some(&client), "/v1/chat/completions", Some(&chat)).await;
    assert_eq!(status, 200, "{body}");
    for (key, path, body, expect) in [
        (&client, "/studio/sessions", None, 403),
        (&client, "/studio/training/pause", Some(json!({})), 403),
        (&annot, "/studio/sessions", None, 200),
        (&annot, "/studio/training/pause", Some(json!({})), 403),
        (&annot, "/studio/keys", None, 403),
        (&annot, "/studio/versions/0/activate", Some(json!({})), 403),
        (
            &owner.to_string(),
            "/studio/training/pause",
            Some(json!({})),
            200,
        ),
    ] {
        let (status, resp) = send(Some(key), path, body.as_ref()).await;
        assert_eq!(status, expect, "{path}: {resp}");
        if expect >= 400 {
            assert_openai_error(status, &resp, expect);
        }
    }
    let (_, keys) = send(Some(owner), "/studio/keys", None).await;
    let names: Vec<&str> = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["owner", "app", "ann"]);
    assert!(
        !keys.to_string().contains(&client),
        "keys are never shown again"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_address_needs_a_key() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = common::config(dir.path());
    c.bind = "0.0.0.0:0".parse().expect("addr");
    let err = clawrl_server::start(c, std::sync::Arc::new(clawrl_model::Model::tiny(7)))
        .await
        .err()
        .expect("refuses to start");
    assert!(err.to_string().contains("without an API key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_the_openapi_document() {
    let t = start().await;
    t.chat("m", json!([user("hi")])).await;
    let r = reqwest::get(format!("{}/metrics", t.url))
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(text.contains("# TYPE clawrl_completions_total counter"));
    assert!(text.contains("clawrl_completions_total 1"));
    assert!(text.contains("clawrl_policy_version 0"));
    let (status, doc) = t.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    // Generated from the router: every route is there, with its path parameters declared.
    assert_eq!(paths.len(), 28, "{:?}", paths.keys().collect::<Vec<_>>());
    let activate = &doc["paths"]["/studio/versions/{v}/activate"]["post"];
    assert_eq!(activate["parameters"][0]["name"], "v");
    assert_eq!(activate["parameters"][0]["in"], "path");
    // Loopback without keys: open, and the document says so beside the key it would take.
    assert_eq!(activate["security"][2], json!({}));
    assert!(activate["responses"].get("401").is_none());
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
    let chat = &doc["components"]["schemas"]["ChatRequest"];
    assert_eq!(chat["required"], json!(["messages"]));
    assert_eq!(chat["properties"]["messages"]["minItems"], 1);
    // The event stream opens with `ready`, so a client knows it is subscribed.
    let mut events = reqwest::get(format!("{}/studio/events", t.url))
        .await
        .expect("events");
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), events.chunk())
        .await
        .expect("an event at once")
        .expect("read")
        .expect("a chunk");
    let first = String::from_utf8_lossy(&first);
    let data = first
        .strip_prefix("event: ready\ndata: ")
        .and_then(|d| d.lines().next())
        .and_then(|d| serde_json::from_str::<Value>(d).ok());
    assert_eq!(
        data,
        Some(json!({"type": "ready", "policy_version": 0})),
        "{first}"
    );
    drop(events);
    // Every documented GET without a parameter answers.
    for (path, item) in paths {
        if item.get("get").is_some() && !path.contains('{') && path != "/studio/events" {
            let (status, body) = t.get(path).await;
            assert_eq!(status, 200, "{path}: {body}");
        }
    }
    t.stop().await;
}
