//! `clawrl monitor` end to end: the native window (egui under Xvfb, Mesa's software OpenGL)
//! follows a real server through a training step and writes a screenshot of its curves.
//! The screenshot is kept in `target/tmp/monitor.png`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::serve;

/// An X server of its own, stopped when dropped; its display is `.1`.
struct Xvfb(std::process::Child, String);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn xvfb() -> Xvfb {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1600x1000x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb (apt-get install xvfb; scripts/install-deps)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("Xvfb says its display");
    Xvfb(child, format!(":{}", line.trim()))
}

#[test]
fn the_monitor_window_draws_the_curves_of_a_live_server() {
    let dir = tempfile::tempdir().expect("dir");
    let s = serve(dir.path());
    s.corrected("a", "What is the capital of France?");
    s.corrected("b", "Which animal says moo?");
    s.wait("/studio/training", |v| v["policy_version"] == 1);

    let x = xvfb();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new(env!("CARGO_BIN_EXE_clawrl"))
        .args(["monitor", &s.url, "--screenshot"])
        .arg(&shot)
        .args(["--wait", "60"])
        .env("DISPLAY", &x.1)
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("clawrl monitor runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("the screenshot is written"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("pixels");
    assert!(
        info.width >= 1000 && info.height >= 600,
        "{}×{}",
        info.width,
        info.height
    );
    // The curves are drawn in egui_plot's palette: saturated colours the dark theme's greys
    // and text never use.
    let px = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let saturated = px
        .chunks_exact(step)
        .filter(|p| {
            let (max, min) = (p[..3].iter().max(), p[..3].iter().min());
            matches!((max, min), (Some(&a), Some(&b)) if a.saturating_sub(b) > 80)
        })
        .count();
    assert!(
        saturated > 200,
        "no curve drawn: {saturated} coloured pixels"
    );
}
