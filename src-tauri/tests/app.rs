//! The real desktop app end to end: tauri-driver and WebKitWebDriver drive the Tauri window
//! under Xvfb through the whole scenario (`common::scenario`), on the embedded model.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use common::{Driver, free_port, program, screenshots, terminate, wait_port};

/// A child process stopped (politely) when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// An X server of its own; returns it and its display (":N").
fn xvfb() -> Result<(Guard, String)> {
    let mut child = Command::new(program("Xvfb", "apt-get install xvfb")?)
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x900x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting Xvfb")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("Xvfb's stdout")?).read_line(&mut line)?;
    let n = line.trim();
    if n.is_empty() {
        bail!("Xvfb did not report a display");
    }
    Ok((Guard(child), format!(":{n}")))
}

#[test]
fn the_desktop_app_end_to_end() -> Result<()> {
    let tauri_driver = program("tauri-driver", "cargo install tauri-driver --locked")?;
    program("WebKitWebDriver", "apt-get install webkit2gtk-driver")?;
    let (_x, display) = xvfb()?;
    let data = tempfile::tempdir()?;
    let (port, native) = (free_port()?, free_port()?);
    let driver = Guard(
        Command::new(tauri_driver)
            .args([
                "--port",
                &port.to_string(),
                "--native-port",
                &native.to_string(),
            ])
            .env("DISPLAY", &display)
            // What the app reads at start: a fresh database, any free port.
            .env("CLAWRL_DATA_DIR", data.path())
            .env("CLAWRL_STUDIO_BIND", "127.0.0.1:0")
            .env("WEBKIT_DISABLE_COMPOSITING_MODE", "1")
            .stdout(Stdio::null())
            .spawn()
            .context("starting tauri-driver")?,
    );
    wait_port(port, Duration::from_secs(30))?;
    let d = Driver::new(
        &format!("http://127.0.0.1:{port}"),
        json!({ "tauri:options": { "application": env!("CARGO_BIN_EXE_clawrl-studio") } }),
    )?;
    let result = common::scenario(&d, &screenshots("tauri")?);
    d.quit();
    drop(driver);
    result
}
