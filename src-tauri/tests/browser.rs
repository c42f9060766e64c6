//! The same Studio UI served to headless Chromium by a real server (embedded model, fresh
//! database) and driven through ChromeDriver: the browser an annotator uses remotely.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clawrl_model::Model;
use clawrl_server::ServerConfig;
use serde_json::json;

use common::{Driver, free_port, program, screenshots, terminate, wait_port};

#[test]
fn the_ui_in_headless_chromium() -> Result<()> {
    let chromedriver = program("chromedriver", "apt-get install chromium-driver")?;
    let chromium = program("chromium", "apt-get install chromium")?;
    let rt = tokio::runtime::Runtime::new()?;
    let data = tempfile::tempdir()?;
    let mut config = ServerConfig::new("clawrl", data.path());
    config.bind = "127.0.0.1:0".parse()?;
    config.ui = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../ui/dist").into());
    let model = Model::load(&clawrl_model::default_model_path(&mut |_| {})?)?;
    let server = rt.block_on(clawrl_server::start(config, Arc::new(model)))?;

    let port = free_port()?;
    let mut driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromedriver")?;
    let profile = tempfile::tempdir()?;
    let run = || -> Result<()> {
        wait_port(port, Duration::from_secs(30))?;
        let d = Driver::new(
            &format!("http://127.0.0.1:{port}"),
            json!({ "browserName": "chrome", "goog:chromeOptions": {
                "binary": chromium,
                // No background traffic: this machine's network is closed.
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.path().display())],
            }}),
        )?;
        d.goto(&format!("http://{}/", server.addr))?;
        let r = common::scenario(&d, &screenshots("chromium")?);
        d.quit();
        r
    };
    let result = run();
    terminate(&mut driver);
    rt.block_on(server.shutdown());
    result
}
