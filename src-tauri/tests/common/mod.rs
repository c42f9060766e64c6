//! What both end-to-end tests share: a small W3C WebDriver client and the scenario a person
//! would follow in the Studio, run once in the real window and once in headless Chromium.

#![allow(dead_code)] // Each test binary uses its own part of the helpers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One WebDriver session.
pub struct Driver {
    http: reqwest::blocking::Client,
    base: String,
}

impl Driver {
    /// Opens a session at `url` (a driver's address) with these capabilities.
    pub fn new(url: &str, capabilities: Value) -> Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        let r: Value = http
            .post(format!("{url}/session"))
            .json(&json!({ "capabilities": { "alwaysMatch": capabilities } }))
            .send()
            .context("reaching the WebDriver server")?
            .json()?;
        let Some(id) = r["value"]["sessionId"].as_str() else {
            bail!("the WebDriver session did not start: {r}");
        };
        Ok(Self {
            http,
            base: format!("{url}/session/{id}"),
        })
    }

    fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .with_context(|| format!("WebDriver {path}"))?
            .json()?;
        if let Some(e) = r["value"]["error"].as_str() {
            bail!("WebDriver {path}: {e}: {}", r["value"]["message"]);
        }
        Ok(r["value"].clone())
    }

    /// Opens a URL.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    /// The first element matching `css`, waiting up to `timeout` for it.
    pub fn find(&self, css: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let r = self.cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            );
            let last = match r {
                Ok(v) => match v[ELEMENT].as_str() {
                    Some(id) => return Ok(id.to_string()),
                    None => format!("unexpected answer {v}"),
                },
                Err(e) => e.to_string(),
            };
            if start.elapsed() > timeout {
                bail!("no element {css} after {timeout:?} ({last})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the element matching `css`, finding it again if the page re-rendered it
    /// between the look-up and the click.
    pub fn click(&self, css: &str) -> Result<()> {
        for _ in 0..5 {
            let id = self.find(css, Duration::from_secs(30))?;
            match self.cmd(
                reqwest::Method::POST,
                &format!("/element/{id}/click"),
                Some(json!({})),
            ) {
                Err(e) if e.to_string().contains("stale element") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                r => return r.map(|_| ()),
            }
        }
        bail!("{css} kept being re-rendered")
    }

    /// Replaces the text of the input matching `css` by typing `text`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.find(css, Duration::from_secs(30))?;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )?;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Types `text` into the field matching `field` and clicks `button`: a form sent.
    pub fn send(&self, field: &str, text: &str, button: &str) -> Result<()> {
        self.type_into(field, text)?;
        self.click(button)
    }

    /// Moves the pointer onto the element matching `css` (a real hover).
    pub fn hover(&self, css: &str) -> Result<()> {
        let id = self.find(css, Duration::from_secs(30))?;
        self.cmd(
            reqwest::Method::POST,
            "/actions",
            Some(json!({ "actions": [{
                "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
                "actions": [{ "type": "pointerMove", "duration": 0, "origin": { ELEMENT: id }, "x": 0, "y": 0 }]
            }] })),
        )?;
        Ok(())
    }

    /// Runs a script in the page and returns its value.
    pub fn js(&self, script: &str) -> Result<Value> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until the text `t` of the element with test id `testid` passes `test` (JavaScript
    /// over `t`).
    pub fn wait_text(
        &self,
        what: &str,
        testid: &str,
        test: &str,
        timeout: Duration,
    ) -> Result<Value> {
        self.wait(what, &text_is(testid, test), timeout)
    }

    /// Polls `script` until it returns something truthy; returns that value.
    pub fn wait(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.js(script)?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                let page = self.js("return document.body.innerText.slice(0, 2000)")?;
                bail!(
                    "waited {timeout:?} for {what}; the page shows:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        // WebKitWebDriver's snapshot waits for the next presentation update, and a page at rest
        // makes none: a 1-pixel animation keeps frames coming while the snapshot is taken.
        self.js(
            "if (!document.getElementById('shot-nudge')) { \
               const s = document.createElement('style'); \
               s.textContent = '@keyframes shot-nudge { from { opacity: .01 } to { opacity: .02 } }'; \
               const n = document.createElement('div'); n.id = 'shot-nudge'; \
               n.style.cssText = 'position:fixed;left:0;bottom:0;width:1px;height:1px;pointer-events:none;animation:shot-nudge .1s infinite alternate'; \
               document.head.append(s); document.body.append(n); } return true",
        )?;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot is not a string")?)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Ends the session.
    pub fn quit(&self) {
        let _ = self.http.delete(&self.base).send();
    }
}

/// A free port on loopback.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something listens on `port`.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > timeout {
            bail!("nothing listens on port {port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Stops a child politely (SIGTERM, then waits): a WebDriver killed with SIGKILL leaves its
/// own children holding the output pipe.
pub fn terminate(child: &mut Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A program from PATH or cargo's bin directory, or a clear error saying how to install it.
pub fn program(name: &str, install: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed ({install}); .ci/run installs it"))
}

/// Where a test's screenshots go.
pub fn screenshots(driver: &str) -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("studio-screenshots")
        .join(driver);
    std::fs::create_dir_all(&dir)?;
    eprintln!("screenshots: {}", dir.display());
    Ok(dir)
}

const LONG: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(30);

/// A script returning `test` (JavaScript over `t`, the text of the element with this test id).
fn text_is(testid: &str, test: &str) -> String {
    format!(
        "const e = document.querySelector('[data-testid={testid}]'); \
         const t = e ? e.textContent : ''; return {test};"
    )
}

/// A script returning the text of the element with this test id.
fn text_of(testid: &str) -> String {
    text_is(testid, "t")
}

/// What a person does in the Studio: chat, 👎 with a correction, a hint previewed and accepted,
/// a training step and its new version, a roll back, a token inspected, the settings; a
/// screenshot of every view.
pub fn scenario(d: &Driver, shots: &Path) -> Result<()> {
    d.find("[data-testid=chat-input]", LONG)
        .context("the Studio UI never appeared")?;
    d.wait_text("the live event stream", "connection", "t === 'live'", SHORT)?;

    // Train every sample at once, through the Train view's form.
    d.click("[data-testid=tab-train]")?;
    d.send(
        "form[data-testid=train-settings] input[name=batch_size]",
        "1",
        "[data-testid=settings-save]",
    )?;
    d.wait_text(
        "batch size 1 applied",
        "pending",
        "t.includes('(batch 1)')",
        SHORT,
    )?;

    // Chat: a streamed answer, with the version that gave it.
    d.click("[data-testid=tab-chat]")?;
    d.send(
        "[data-testid=chat-input]",
        "Name one fruit.",
        "[data-testid=chat-send]",
    )?;
    let answer = d.wait(
        "the streamed answer",
        "const v = document.querySelector('[data-testid=turn-version]'); \
         const t = document.querySelector('[data-testid=assistant-text]'); \
         return v && t && !t.classList.contains('streaming') ? t.textContent : ''",
        LONG,
    )?;
    assert!(
        !answer.as_str().unwrap_or("").trim().is_empty(),
        "an empty answer"
    );
    assert_eq!(d.js(&text_of("turn-version"))?, json!("v0"));
    d.screenshot(&shots.join("chat.png"))?;

    // 👎 with a correction: judged −1, the correction becomes a hint, a sample trains.
    d.click("[data-testid=thumb-down]")?;
    d.send(
        "[data-testid=correction-text]",
        "Answer with one word only.",
        "[data-testid=correction-send]",
    )?;
    d.wait_text(
        "the judge's vote",
        "turn-status",
        "t.includes('judged −1')",
        LONG,
    )?;

    // Annotate: a candidate hint previewed (overlap per token), added, accepted.
    d.click("[data-testid=tab-annotate]")?;
    d.find("[data-testid=queue] li[data-turn]", LONG)?;
    d.send(
        "[data-testid=hint-text]",
        "Reply with a single word.",
        "[data-testid=hint-preview]",
    )?;
    let summary = d.wait("the hint preview", &text_of("preview-summary"), LONG)?;
    assert!(
        summary.as_str().unwrap_or("").contains("overlap total"),
        "{summary}"
    );
    d.find("[data-testid=hint-preview-result] .tok", SHORT)?;
    d.screenshot(&shots.join("annotate.png"))?;
    d.click("[data-testid=hint-add]")?;
    d.wait(
        "the candidate hint",
        "return [...document.querySelectorAll('[data-testid=hint-status]')].some(e => e.textContent === 'candidate')",
        LONG,
    )?;
    d.click("[data-testid=hint-accept]")?;
    d.wait(
        "the accepted hint",
        "return [...document.querySelectorAll('[data-testid=hint-status]')].every(e => e.textContent === 'accepted')",
        LONG,
    )?;

    // Train: a step ran and its version is served.
    d.click("[data-testid=tab-train]")?;
    d.find("[data-testid=versions] tr[data-version='1']", LONG)?;
    d.wait_text(
        "a new version served",
        "live-version",
        "/serving v[1-9]/.test(t)",
        LONG,
    )?;
    d.wait(
        "the curves",
        "return document.querySelector('[data-metric=loss] figcaption .num').textContent !== '—'",
        SHORT,
    )?;
    d.screenshot(&shots.join("train.png"))?;

    // Roll back to the base model in one click.
    d.click("[data-testid=activate-0]")?;
    d.wait(
        "the roll back",
        "const r = document.querySelector('[data-testid=versions] tr[data-version=\"0\"]'); \
         return r && r.classList.contains('active') && \
           document.querySelector('[data-testid=live-version]').textContent === 'serving v0'",
        LONG,
    )?;

    // Inspect: tokens coloured by overlap; a hover shows both top-k.
    d.js("location.hash = '#inspect/1'; return true")?;
    d.find("[data-testid=view-inspect] .tok[data-pos='0']", LONG)?;
    d.hover("[data-testid=view-inspect] .tok[data-pos='0']")?;
    d.wait(
        "the token's top-k",
        "const e = document.querySelector('[data-testid=view-inspect] [data-testid=token-detail]'); \
         return e && e.textContent.includes('student top-k') && e.textContent.includes('teacher top-k')",
        SHORT,
    )?;
    d.screenshot(&shots.join("inspect.png"))?;

    // Rollouts: an environment's episode (a rollout of a group, ended with its outcome), sent
    // from the page as any client would, shown as its steps.
    d.wait(
        "a rollout sent",
        "if (!window.__rollout) { window.__rollout = 'sending'; (async () => { \
           const post = (b) => fetch('/v1/chat/completions', {method: 'POST', \
             headers: {'content-type': 'application/json'}, body: JSON.stringify(b)}) \
             .then((r) => r.json()); \
           const m = [{role: 'user', content: 'What is 2 + 2?'}]; \
           const a = await post({messages: m, max_tokens: 8, session_id: 'studio-rollout', group_id: 'studio-task'}); \
           m.push(a.choices[0].message, {role: 'user', content: 'The check passed: that is right.'}); \
           await post({messages: m, max_tokens: 1, session_id: 'studio-rollout', group_id: 'studio-task', \
             session_done: true, outcome: 1}); \
           window.__rollout = 'sent'; })(); } \
         return window.__rollout === 'sent';",
        LONG,
    )?;
    d.click("[data-testid=tab-rollouts]")?;
    d.wait_text(
        "the rollout's group",
        "rollout-groups",
        "t.includes('studio-task · 1/1 solved')",
        SHORT,
    )?;
    d.click("[data-testid=rollout-groups] a")?;
    d.wait_text(
        "the rollout's step with its observation",
        "rollout-steps",
        "t.includes('outcome 1') && t.includes('The check passed')",
        SHORT,
    )?;
    d.screenshot(&shots.join("rollouts.png"))?;

    // Settings: the model and judge being served, and where the model runs.
    d.click("[data-testid=tab-settings]")?;
    d.wait_text("the model id", "model-id", "t === 'clawrl'", SHORT)?;
    d.wait_text(
        "the device",
        "device",
        "t === 'cpu' || t.startsWith('gpu: ')",
        SHORT,
    )?;
    d.screenshot(&shots.join("settings.png"))?;
    Ok(())
}
