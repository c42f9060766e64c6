//! The live loop's training curves in a native window (egui + egui_plot), for talks: a
//! speaker puts it full screen beside the chat while the audience watches the assistant learn.
//!
//! It is a client of a running server: the steps so far from `GET /studio/steps`, then every
//! `trained` event of `GET /studio/events` (server-sent events) as it happens, reconnecting
//! when the server goes away. Drawing is egui's; the curves are egui_plot's.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eframe::egui;
use egui_plot::{Legend, Line, Plot, Points};
use serde_json::Value;

/// What the window shows and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server (e.g. `http://127.0.0.1:8080`).
    pub url: String,
    /// An annotator's or owner's key when the server needs one.
    pub api_key: Option<String>,
    /// Start full screen (F11 toggles).
    pub fullscreen: bool,
    /// Write a PNG of the window to this file once the curves are drawn (or after `wait`),
    /// then close: for tests and slides.
    pub screenshot: Option<PathBuf>,
    /// With `screenshot`: how long to wait for a first step before taking it anyway.
    pub wait: Duration,
}

/// A failure of the window or of the screenshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No window could be opened (no display, no OpenGL).
    #[error("cannot open the window: {0}")]
    Window(String),
    /// The screenshot could not be written.
    #[error("writing the screenshot {path}: {reason}")]
    Screenshot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One training step's figures (DESIGN.md §2's loss and its parts).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Point {
    step: f64,
    loss: f64,
    loss_rl: f64,
    loss_opd: f64,
    kl: f64,
    clip_frac: f64,
    mean_reward: Option<f64>,
    mean_overlap: Option<f64>,
}

impl Point {
    /// A step's point from its step number and its `metrics` (a `StepRecord` as JSON).
    fn of(step: i64, m: &Value) -> Self {
        let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        Self {
            step: step as f64,
            loss: f("loss"),
            loss_rl: f("loss_rl"),
            loss_opd: f("loss_opd"),
            kl: f("kl"),
            clip_frac: f("clip_frac"),
            mean_reward: m["mean_reward"].as_f64(),
            mean_overlap: m["mean_overlap"].as_f64(),
        }
    }
}

/// What the follower thread has seen.
#[derive(Debug, Default)]
struct Seen {
    points: Vec<Point>,
    version: i64,
    pending: Option<i64>,
    turns: u64,
    connected: bool,
    error: Option<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the server until the process ends: the steps so far, then the event stream;
/// reconnects after a failure. `repaint` wakes the window.
fn follow(o: Options, seen: Shared, repaint: impl Fn() + Send + 'static) {
    let http = match reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            lock(&seen).error = Some(e.to_string());
            return;
        }
    };
    let base = o.url.trim_end_matches('/').to_string();
    let get = |path: &str| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(k) = &o.api_key {
            r = r.bearer_auth(k);
        }
        r.send().and_then(|r| r.error_for_status())
    };
    loop {
        let result = (|| -> Result<(), String> {
            let steps: Value = get("/studio/steps?limit=1000")
                .and_then(|r| r.json())
                .map_err(|e| e.to_string())?;
            let training: Value = get("/studio/training")
                .and_then(|r| r.json())
                .map_err(|e| e.to_string())?;
            {
                let mut s = lock(&seen);
                s.points = steps["steps"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|st| Point::of(st["step"].as_i64().unwrap_or(0), &st["metrics"]))
                            .collect()
                    })
                    .unwrap_or_default();
                s.version = training["policy_version"].as_i64().unwrap_or(0);
                s.pending = training["pending_samples"].as_i64();
                s.connected = true;
                s.error = None;
            }
            repaint();
            let events = get("/studio/events").map_err(|e| e.to_string())?;
            let mut kind = String::new();
            for line in BufReader::new(events).lines() {
                let line = line.map_err(|e| e.to_string())?;
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_string();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                        continue;
                    };
                    let mut s = lock(&seen);
                    match kind.as_str() {
                        "trained" => {
                            s.points
                                .push(Point::of(v["step"].as_i64().unwrap_or(0), &v["metrics"]));
                            s.version = v["version"].as_i64().unwrap_or(s.version);
                        }
                        "published" => s.version = v["version"].as_i64().unwrap_or(s.version),
                        "sample" => s.pending = v["pending"].as_i64(),
                        "turn" => s.turns += 1,
                        _ => continue,
                    }
                    drop(s);
                    repaint();
                }
            }
            Err("the event stream ended".into())
        })();
        if let Err(e) = result {
            tracing::warn!(error = %e, "monitor: lost the server; reconnecting");
            let mut s = lock(&seen);
            s.connected = false;
            s.error = Some(e);
            drop(s);
            repaint();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

struct Monitor {
    options: Options,
    seen: Shared,
    started: Instant,
    /// The screenshot was asked for (it arrives a frame later).
    asked: bool,
    /// Where the screenshot went, or why it did not.
    done: Arc<Mutex<Option<Result<(), Error>>>>,
}

/// Curve colours, bright on the dark theme (matplotlib's "tab10").
const PALETTE: [egui::Color32; 4] = [
    egui::Color32::from_rgb(31, 119, 180),
    egui::Color32::from_rgb(255, 127, 14),
    egui::Color32::from_rgb(44, 160, 44),
    egui::Color32::from_rgb(214, 39, 40),
];

/// The curves of one plot: (name, values by step).
type Series = Vec<(&'static str, Vec<[f64; 2]>)>;

/// A curve's name and how to read its value off a step (`None`: no value at that step).
type Part = (&'static str, fn(&Point) -> Option<f64>);

fn series(points: &[Point], parts: &[Part]) -> Series {
    parts
        .iter()
        .map(|&(name, f)| {
            let v = points
                .iter()
                .filter_map(|p| f(p).filter(|y| y.is_finite()).map(|y| [p.step, y]))
                .collect();
            (name, v)
        })
        .collect()
}

fn plot(ui: &mut egui::Ui, id: &str, title: &str, height: f32, lines: Series) {
    ui.label(egui::RichText::new(title).strong().size(18.0));
    // Steps span the x axis (one step alone would leave it without a width).
    let xs = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q[0]));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (lo, hi) = if lo <= hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (0.0, 1.0)
    };
    Plot::new(id)
        .height(height)
        .include_x(lo)
        .include_x(hi)
        .legend(Legend::default())
        .x_axis_label("step")
        .show(ui, |p| {
            for ((name, pts), color) in lines.into_iter().zip(PALETTE.iter().cycle()) {
                // Markers too: the first step is a single point, which a line alone hides.
                p.points(Points::new(name, pts.clone()).color(*color).radius(4.0));
                p.line(Line::new(name, pts).color(*color).width(2.5));
            }
        });
}

impl eframe::App for Monitor {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        if ctx.input(|i| i.key_pressed(egui::Key::F11)) {
            let full = ctx.input(|i| i.viewport().fullscreen.unwrap_or(false));
            ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(!full));
        }
        let (points, version, pending, turns, connected, error) = {
            let s = lock(&self.seen);
            (
                s.points.clone(),
                s.version,
                s.pending,
                s.turns,
                s.connected,
                s.error.clone(),
            )
        };
        egui::Panel::top("status").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading(format!("ClawRL — policy v{version}"));
                ui.separator();
                ui.label(format!("{} training steps", points.len()));
                if let Some(p) = pending {
                    ui.label(format!("· {p} samples pending"));
                }
                ui.label(format!("· {turns} turns since the window opened"));
                ui.separator();
                match (connected, &error) {
                    (true, _) => ui.label(format!("live from {}", self.options.url)),
                    (false, Some(e)) => ui.colored_label(
                        egui::Color32::LIGHT_RED,
                        format!("reconnecting to {}: {e}", self.options.url),
                    ),
                    (false, None) => ui.label(format!("connecting to {}…", self.options.url)),
                };
            });
        });
        egui::CentralPanel::default().show(ui, |ui| {
            let h = (ui.available_height() / 2.0 - 40.0).max(120.0);
            ui.columns(2, |c| {
                plot(
                    &mut c[0],
                    "loss",
                    "Loss (total = w_rl·RL + w_opd·OPD)",
                    h,
                    series(
                        &points,
                        &[
                            ("loss", |p| Some(p.loss)),
                            ("RL", |p| Some(p.loss_rl)),
                            ("OPD", |p| Some(p.loss_opd)),
                        ],
                    ),
                );
                plot(
                    &mut c[1],
                    "reward",
                    "Mean reward of the batch",
                    h,
                    series(&points, &[("reward", |p| p.mean_reward)]),
                );
                plot(
                    &mut c[0],
                    "kl",
                    "KL to the base, clip fraction",
                    h,
                    series(
                        &points,
                        &[("KL", |p| Some(p.kl)), ("clip", |p| Some(p.clip_frac))],
                    ),
                );
                plot(
                    &mut c[1],
                    "overlap",
                    "Mean overlap O[h*, i] (tokens of k)",
                    h,
                    series(&points, &[("overlap", |p| p.mean_overlap)]),
                );
            });
        });
        self.screenshot(&ctx, !points.is_empty());
    }
}

impl Monitor {
    /// Takes the screenshot once there is something to show (or the wait is over), writes
    /// it, then closes the window.
    fn screenshot(&mut self, ctx: &egui::Context, drawn: bool) {
        let Some(path) = self.options.screenshot.clone() else {
            return;
        };
        if lock_done(&self.done).is_some() {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if !self.asked && (drawn || self.started.elapsed() > self.options.wait) {
            self.asked = true;
            let (done, repaint) = (self.done.clone(), ctx.clone());
            ctx.request_screenshot(move |image| {
                let result = write_png(&path, &image);
                *lock_done(&done) = Some(result);
                repaint.request_repaint();
            });
        }
        // Keep frames coming until the screenshot is back.
        ctx.request_repaint_after(Duration::from_millis(100));
    }
}

fn lock_done(
    d: &Mutex<Option<Result<(), Error>>>,
) -> std::sync::MutexGuard<'_, Option<Result<(), Error>>> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `image` (RGBA) as a PNG (the png crate).
fn write_png(path: &std::path::Path, image: &egui::ColorImage) -> Result<(), Error> {
    let bad = |reason: String| Error::Screenshot {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::create(path).map_err(|e| bad(e.to_string()))?;
    let [w, h] = image.size;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| bad(e.to_string()))?;
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    writer
        .write_image_data(&bytes)
        .map_err(|e| bad(e.to_string()))?;
    writer.finish().map_err(|e| bad(e.to_string()))
}

/// Opens the window and runs until it is closed (or, with a screenshot, until it is written).
///
/// Errors: [`Error::Window`] when no window can be opened (no display, no OpenGL);
/// [`Error::Screenshot`] when the screenshot cannot be written.
pub fn run(options: Options) -> Result<(), Error> {
    let seen: Shared = Arc::default();
    let done = Arc::new(Mutex::new(None));
    let viewport = egui::ViewportBuilder::default()
        .with_title("ClawRL monitor")
        .with_inner_size([1280.0, 800.0])
        .with_fullscreen(options.fullscreen);
    let native = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    let app = Monitor {
        options: options.clone(),
        seen: seen.clone(),
        started: Instant::now(),
        asked: false,
        done: done.clone(),
    };
    eframe::run_native(
        "clawrl-monitor",
        native,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            // Big type for the back of the room.
            ctx.set_zoom_factor(1.25);
            std::thread::Builder::new()
                .name("clawrl-monitor-follow".into())
                .spawn(move || follow(options, seen, move || ctx.request_repaint()))
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| Error::Window(e.to_string()))?;
    match lock_done(&done).take() {
        Some(result) => result,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_record_becomes_a_point_and_missing_parts_leave_gaps() {
        let m = serde_json::json!({"loss": 0.5, "loss_rl": 0.2, "loss_opd": 0.3, "kl": 0.01,
                                   "clip_frac": 0.0, "mean_reward": -1.0, "mean_overlap": null});
        let p = Point::of(3, &m);
        assert_eq!(
            (p.step, p.loss, p.mean_reward, p.mean_overlap),
            (3.0, 0.5, Some(-1.0), None)
        );
        let s = series(
            &[p],
            &[
                ("reward", |p| p.mean_reward),
                ("overlap", |p| p.mean_overlap),
            ],
        );
        assert_eq!(s[0].1, vec![[3.0, -1.0]]);
        assert!(s[1].1.is_empty());
    }
}
