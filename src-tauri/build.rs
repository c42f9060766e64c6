//! Builds the web UI (`ui/`, TypeScript) before the app embeds its path, then runs Tauri's
//! build step. `npm ci` runs once (when `ui/node_modules` is missing); the compile runs whenever
//! a UI source changes.

use std::path::Path;
use std::process::Command;

fn npm(ui: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(ui)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "running npm {args:?} in {} (is Node.js installed?): {e}",
                ui.display()
            )
        });
    assert!(status.success(), "npm {args:?} failed in {}", ui.display());
}

fn main() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui");
    for p in [
        "src",
        "static",
        "package.json",
        "package-lock.json",
        "tsconfig.json",
        "build.mjs",
    ] {
        println!("cargo:rerun-if-changed={}", ui.join(p).display());
    }
    if !ui.join("node_modules").is_dir() {
        npm(&ui, &["ci", "--no-audit", "--no-fund"]);
    }
    npm(&ui, &["run", "build"]);
    tauri_build::build();
}
