//! The OpenAPI document of every endpoint, served at `/openapi.json`.

use serde_json::{Map, Value, json};

/// (method, path, role needed, summary) of every endpoint.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "get",
        "/healthz",
        "none",
        "Liveness (200 while serving), status ok or degraded with the failing components (problems), the model and the served policy version.",
    ),
    ("get", "/openapi.json", "none", "This document."),
    ("get", "/metrics", "client", "Prometheus metrics."),
    ("get", "/v1/models", "client", "The served model (OpenAI)."),
    (
        "post",
        "/v1/chat/completions",
        "client",
        "Chat completion, streamed (SSE) or not (OpenAI), with session_id / turn_type / session_done (and a rollout's group_id / outcome).",
    ),
    (
        "get",
        "/studio/sessions",
        "annotator",
        "Sessions, most recent first (?limit, ?offset).",
    ),
    (
        "get",
        "/studio/sessions/{id}",
        "annotator",
        "A session with its turns and votes.",
    ),
    (
        "get",
        "/studio/first-answers",
        "annotator",
        "Each recent session's first answer and its reward r_t, oldest first (?limit).",
    ),
    (
        "get",
        "/studio/turns/{id}",
        "annotator",
        "A turn: tokens with log-probs and student top-k, next states, votes, hints, samples.",
    ),
    (
        "get",
        "/studio/turns/{id}/inspect",
        "annotator",
        "Per token: student top-k, teacher top-k under each candidate hint, O[h,i], Δ, the selection.",
    ),
    (
        "post",
        "/studio/turns/{id}/feedback",
        "annotator",
        "Thumbs up/down and/or a correction; judged as a next state.",
    ),
    (
        "post",
        "/studio/turns/{id}/hints",
        "annotator",
        "Add a candidate hint.",
    ),
    (
        "post",
        "/studio/turns/{id}/hints/preview",
        "annotator",
        "Overlap and Δ of a candidate hint, without saving it.",
    ),
    (
        "post",
        "/studio/hints/{id}/accept",
        "annotator",
        "Accept a hint: it becomes the turn's OPD sample.",
    ),
    (
        "post",
        "/studio/hints/{id}/reject",
        "annotator",
        "Reject a hint: it never trains.",
    ),
    (
        "get",
        "/studio/queue",
        "annotator",
        "Judged turns with their votes and hints (the annotation queue).",
    ),
    (
        "get",
        "/studio/training",
        "annotator",
        "Training settings and status.",
    ),
    (
        "get",
        "/studio/steps",
        "annotator",
        "Training steps with their metrics (?after, ?limit).",
    ),
    (
        "get",
        "/studio/versions",
        "annotator",
        "Policy versions and the active one.",
    ),
    (
        "get",
        "/studio/events",
        "annotator",
        "Server-sent events: turn, next_state, judged, sample, hint, train_started, trained, train_failed, published, refused, settings.",
    ),
    (
        "get",
        "/studio/refused",
        "annotator",
        "The latest refused requests (4xx), newest first, with why and the session.",
    ),
    (
        "post",
        "/studio/training/settings",
        "owner",
        "Change method and hyper-parameters (a partial settings object).",
    ),
    ("post", "/studio/training/pause", "owner", "Pause training."),
    (
        "post",
        "/studio/training/resume",
        "owner",
        "Resume training.",
    ),
    (
        "post",
        "/studio/versions/{v}/activate",
        "owner",
        "Serve an earlier version (roll back) and train on from it.",
    ),
    (
        "get",
        "/studio/keys",
        "owner",
        "API keys (names and roles).",
    ),
    (
        "post",
        "/studio/keys",
        "owner",
        "Create a key {name, role}; the key is shown once.",
    ),
    ("delete", "/studio/keys/{id}", "owner", "Delete a key."),
    (
        "post",
        "/studio/keys/{id}/reject",
        "owner",
        "Reject everything a key contributed (poisoning): its hints, next states and the samples they touched; roll back before the first version trained on them.",
    ),
];

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, role, summary) in ROUTES {
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(ops) = entry {
            let mut op = json!({
                "summary": summary,
                "x-role": role,
                "responses": {
                    "200": {"description": "Success."},
                    "4XX": {"description": "OpenAI-style error: {\"error\": {\"message\", \"type\", \"param\", \"code\"}}."}
                }
            });
            if *role != "none" {
                op["security"] = json!([{"bearer": []}]);
            }
            ops.insert(method.to_string(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ClawRL Studio",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An OpenAI-compatible server whose policy learns from the next state of every answer (OpenClaw-RL), and the Studio API around it."
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}
