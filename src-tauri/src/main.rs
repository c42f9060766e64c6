//! ClawRL Studio, the desktop app: starts the engine and server in-process and opens a window on
//! the Studio UI that the server serves. The shell owns the window, the menu and the native
//! dialogs, and nothing else: the UI talks to the engine over the same HTTP API and event
//! stream a browser uses.

mod engine;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use clawrl_model::Device;
use tauri::menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::{AppHandle, Manager, RunEvent, Url, WebviewUrl, WebviewWindow, WebviewWindowBuilder};
use tauri_plugin_dialog::{DialogExt, MessageDialogKind};

use crate::engine::{Engine, Options};

/// The UI built by build.rs, beside the sources.
const BUILT_UI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ui/dist");

/// ClawRL Studio: chat with your assistant, correct it, and watch it learn.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A GGUF file or Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct,
    /// fetched on first use).
    #[arg(long, env = "CLAWRL_MODEL", value_name = "PATH")]
    model: Option<PathBuf>,
    /// Where the server listens; other OpenAI clients can use it too. A free port is taken when
    /// this one is busy.
    #[arg(long, env = "CLAWRL_STUDIO_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Where the database and checkpoints live (default: clawrl/ in the user's data directory).
    #[arg(long, env = "CLAWRL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Samples per training step (small, so that learning shows within minutes).
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// The built web UI.
    #[arg(long, value_name = "DIR", default_value = BUILT_UI)]
    ui: PathBuf,
    /// Where the model runs and trains: auto (a real GPU when wgpu finds one, else the CPU),
    /// cpu, or gpu (any adapter, software ones included). File ▸ Device changes it.
    #[arg(long, env = "CLAWRL_DEVICE", default_value = "auto", value_parser = ["auto", "cpu", "gpu"])]
    device: String,
}

/// The File ▸ Device entries: menu id, label, device.
const DEVICES: [(&str, &str, Device); 3] = [
    (
        "device_auto",
        "Auto: a real GPU, else the CPU",
        Device::Auto,
    ),
    ("device_cpu", "CPU", Device::Cpu),
    (
        "device_gpu",
        "GPU (any adapter, software ones too)",
        Device::Gpu,
    ),
];

fn main() -> Result<()> {
    // SAFETY: the first statement of main, before any other thread exists.
    unsafe { clawrl_trainer::keep_candle_on_the_calling_thread() };
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tao=warn,wry=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if !args.bind.ip().is_loopback() {
        anyhow::bail!("the Studio serves loopback only: use `clawrl serve` with keys to share it");
    }
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => {
            clawrl_server::default_data_dir().context("no user data directory: pass --data-dir")?
        }
    };
    let device: Device = args.device.parse()?;
    let engine = Engine::new(Options {
        model: args.model,
        bind: args.bind,
        data_dir,
        batch_size: args.batch_size,
        ui: args.ui,
        device,
    })?;
    let app = tauri::Builder::default()
        .plugin(tauri_plugin_dialog::init())
        .setup({
            let engine = engine.clone();
            move |app| {
                app.set_menu(menu(app.handle(), device)?)?;
                let window =
                    WebviewWindowBuilder::new(app, "main", WebviewUrl::App("index.html".into()))
                        .title("ClawRL Studio")
                        .inner_size(1280.0, 860.0)
                        .build()?;
                let splash = window.url()?;
                app.manage(Splash(splash));
                let engine = engine.clone();
                std::thread::spawn(move || show_engine(&engine, &window, None));
                Ok(())
            }
        })
        .on_menu_event({
            let engine = engine.clone();
            move |app, event| on_menu(app, &engine, event.id().as_ref())
        })
        .build(tauri::generate_context!())
        .context("opening the window")?;
    app.run(move |_, event| {
        if let RunEvent::Exit = event {
            // The current training step finishes and is saved before the process ends.
            engine.stop();
        }
    });
    Ok(())
}

/// The bundled splash page's URL, to return to while the engine restarts.
struct Splash(Url);

fn menu(app: &AppHandle, device: Device) -> tauri::Result<Menu<tauri::Wry>> {
    let devices = Submenu::with_id(app, "device", "Device", true)?;
    for (id, label, d) in DEVICES {
        devices.append(&CheckMenuItem::with_id(
            app,
            id,
            label,
            true,
            d == device,
            None::<&str>,
        )?)?;
    }
    let file = Submenu::with_id_and_items(
        app,
        "file",
        "File",
        true,
        &[
            &MenuItem::with_id(
                app,
                "open_model",
                "Open model file (GGUF)…",
                true,
                None::<&str>,
            )?,
            &MenuItem::with_id(
                app,
                "open_folder",
                "Open Hugging Face model folder…",
                true,
                None::<&str>,
            )?,
            &MenuItem::with_id(
                app,
                "export_adapter",
                "Export adapter (PEFT)…",
                true,
                None::<&str>,
            )?,
            &MenuItem::with_id(
                app,
                "export_gguf",
                "Export merged model (GGUF)…",
                true,
                None::<&str>,
            )?,
            &PredefinedMenuItem::separator(app)?,
            &devices,
            &PredefinedMenuItem::separator(app)?,
            &PredefinedMenuItem::quit(app, None)?,
        ],
    )?;
    Menu::with_items(app, &[&file])
}

fn on_menu(app: &AppHandle, engine: &Arc<Engine>, id: &str) {
    let Some(window) = app.get_webview_window("main") else {
        return;
    };
    let engine = engine.clone();
    if let Some(&(_, _, device)) = DEVICES.iter().find(|(d, _, _)| *d == id) {
        check_device(app, device);
        if engine.runs_on(device) {
            return;
        }
        engine.set_device(device);
        // The same model again, on the new device.
        let model = engine.model_path();
        std::thread::spawn(move || show_engine(&engine, &window, model));
        return;
    }
    match id {
        "open_model" => app
            .dialog()
            .file()
            .set_title("Open a model")
            .add_filter("GGUF model", &["gguf"])
            .pick_file(move |p| {
                if let Some(path) = p.and_then(|p| p.into_path().ok()) {
                    std::thread::spawn(move || show_engine(&engine, &window, Some(path)));
                }
            }),
        "open_folder" => app
            .dialog()
            .file()
            .set_title("Open a Hugging Face model folder")
            .pick_folder(move |p| {
                if let Some(path) = p.and_then(|p| p.into_path().ok()) {
                    std::thread::spawn(move || show_engine(&engine, &window, Some(path)));
                }
            }),
        "export_adapter" => {
            let app = app.clone();
            app.clone()
                .dialog()
                .file()
                .set_title("Export the serving adapter into a folder")
                .pick_folder(move |p| {
                    let Some(dir) = p.and_then(|p| p.into_path().ok()) else {
                        return;
                    };
                    let (text, kind) = match engine.export_adapter(&dir) {
                        Ok(v) => (
                            format!("Adapter v{v} saved in {} (PEFT layout).", dir.display()),
                            MessageDialogKind::Info,
                        ),
                        Err(e) => (format!("{e:#}"), MessageDialogKind::Error),
                    };
                    app.dialog()
                        .message(text)
                        .title("Export adapter")
                        .kind(kind)
                        .show(|_| {});
                });
        }
        "export_gguf" => {
            let app = app.clone();
            app.clone()
                .dialog()
                .file()
                .set_title("Export the base model with the serving adapter merged (GGUF)")
                .add_filter("GGUF model", &["gguf"])
                .set_file_name("clawrl-merged.gguf")
                .save_file(move |p| {
                    let Some(path) = p.and_then(|p| p.into_path().ok()) else {
                        return;
                    };
                    // Merging takes seconds: off the event loop.
                    std::thread::spawn(move || {
                        let (text, kind) = match engine.export_gguf(&path) {
                            Ok(v) => (
                                format!(
                                    "The base model with adapter v{v} merged is saved as {}; llama.cpp loads it.",
                                    path.display()
                                ),
                                MessageDialogKind::Info,
                            ),
                            Err(e) => (format!("{e:#}"), MessageDialogKind::Error),
                        };
                        app.dialog()
                            .message(text)
                            .title("Export merged model")
                            .kind(kind)
                            .show(|_| {});
                    });
                });
        }
        _ => {}
    }
}

/// Checks `device`'s entry of File ▸ Device and unchecks the others.
fn check_device(app: &AppHandle, device: Device) {
    let Some(kind) = app.menu().and_then(|m| m.get("file")) else {
        return;
    };
    let Some(devices) = kind.as_submenu().and_then(|f| f.get("device")) else {
        return;
    };
    let Some(devices) = devices.as_submenu() else {
        return;
    };
    for (id, _, d) in DEVICES {
        if let Some(item) = devices.get(id)
            && let Some(check) = item.as_check_menuitem()
        {
            let _ = check.set_checked(d == device);
        }
    }
}

/// Starts (or restarts) the engine, reporting progress on the splash page, then points the
/// window at the UI it serves.
fn show_engine(engine: &Engine, window: &WebviewWindow, model: Option<PathBuf>) {
    if model.is_some()
        && let Some(splash) = window.try_state::<Splash>()
    {
        let _ = window.navigate(splash.0.clone());
        // Let the splash page load before it is told anything.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let status = |text: &str, failed: bool| {
        let text = serde_json::to_string(text).unwrap_or_default();
        let _ = window.eval(format!(
            "window.setStatus && window.setStatus({text}, {failed})"
        ));
    };
    match engine.start(model, &|t| status(t, false)) {
        Ok(addr) => match Url::parse(&format!("http://{addr}/ui/")) {
            Ok(url) => {
                if let Err(e) = window.navigate(url) {
                    status(&format!("Could not open the UI: {e}"), true);
                }
            }
            Err(e) => status(&format!("Bad address {addr}: {e}"), true),
        },
        Err(e) => {
            tracing::error!("{e:#}");
            status(&format!("The engine did not start:\n{e:#}"), true);
        }
    }
}
