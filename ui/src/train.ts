// Train: live curves of every training step, the sample queue, policy versions with one-click
// roll back, the method and its hyper-parameters, pause and resume.

import { api, onEvent } from "./api.js";
import { attempt, fill, h, plural, toast } from "./dom.js";

type Metrics = Record<string, number>;
interface Step {
  step: number;
  policy_version: number;
  seconds: number;
  metrics: Metrics;
}

/** The curves drawn, in order: metric key and its label. */
const CURVES: [string, string][] = [
  ["mean_reward", "reward (mean r_t)"],
  ["loss", "loss (hybrid)"],
  ["loss_rl", "loss, RL part"],
  ["loss_opd", "loss, OPD part"],
  ["loss_fkl", "loss, forward-KL part"],
  ["loss_retry", "loss, accepted-retry part"],
  ["clip_frac", "clip fraction (GRPO)"],
  ["kl", "KL to the reference"],
  ["mean_overlap", "mean overlap"],
  ["samples", "samples per step"],
  ["delta_clip_frac", "|Δ| clipped (fraction)"],
];

/** Editable hyper-parameters: key, label, input type. */
const FIELDS: [string, string, "number" | "select", string[]?][] = [
  ["method", "method", "select", ["combined", "rl", "opd", "none"]],
  ["selection", "hint selection", "select", ["sequence", "token", "random", "longest"]],
  ["batch_size", "batch size (samples per step)", "number"],
  ["top_k", "k (top-k support)", "number"],
  ["lr", "learning rate", "number"],
  ["w_rl", "w_RL", "number"],
  ["w_opd", "w_OPD", "number"],
  ["delta_clip", "C (Δ clip)", "number"],
  ["eps_lo", "ε_lo", "number"],
  ["eps_hi", "ε_hi", "number"],
  ["beta", "β (KL)", "number"],
  ["support", "OPD support S_i", "select", ["student", "teacher", "union"]],
  ["w_fkl", "λ (forward KL to the teacher)", "number"],
  ["w_retry", "w_retry (accepted-retry distillation)", "number"],
  ["epochs", "passes per batch", "number"],
  ["replay", "retry replay (earlier retries per step)", "number"],
  ["weight_decay", "weight decay", "number"],
  ["max_grad_norm", "max grad norm", "number"],
];

let steps: Step[] = [];
/** Each recent session's first answer: 1 when the judge accepted it, 0 when not. */
let firstAnswers: number[] = [];
let charts: HTMLElement;
let status: HTMLElement;
let progress: HTMLElement;
let versions: HTMLElement;
let refused: HTMLElement;
let form: HTMLFormElement;
let pauseBtn: HTMLButtonElement;
let paused = false;

/** Builds the Train view into `root`. */
export function mountTrain(root: HTMLElement): void {
  charts = h("div", { class: "charts", "data-testid": "charts" });
  status = h("div", { class: "train-status", "data-testid": "train-status" });
  progress = h("div", { class: "progress", hidden: true, "data-testid": "train-progress" });
  versions = h("table", { class: "versions", "data-testid": "versions" });
  refused = h("table", { class: "refused", "data-testid": "refused" });
  pauseBtn = h("button", { "data-testid": "train-pause" }, "Pause");
  pauseBtn.addEventListener("click", async () => {
    const r = await attempt(() => api("POST", `/studio/training/${paused ? "resume" : "pause"}`));
    if (r) showStatus(r);
  });
  form = h("form", { class: "settings-form", "data-testid": "train-settings" });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void saveSettings();
  });
  fill(
    root,
    h("div", { class: "train-top" }, status, pauseBtn),
    progress,
    charts,
    h(
      "div",
      { class: "train-bottom" },
      h("div", {}, h("h3", {}, "Policy versions"), versions),
      h("div", {}, h("h3", {}, "Method and hyper-parameters"), form),
    ),
    h(
      "div",
      {},
      h("h3", {}, "Refused requests"),
      h("p", { class: "muted" }, "Requests the server answered with an error (4xx): why, and for which session. A client whose turns never arrive shows it here."),
      refused,
    ),
  );
  onEvent((e) => {
    if (e.type === "train_started") {
      progress.hidden = false;
      fill(progress, h("span", { class: "spinner" }), ` Training step ${e.step} on ${plural(e.samples, "sample")}…`);
    } else if (e.type === "trained") {
      progress.hidden = true;
      steps.push({ step: e.step, policy_version: e.version, seconds: e.metrics.seconds ?? 0, metrics: e.metrics });
      drawCharts();
      void refresh(false);
    } else if (e.type === "train_failed") {
      progress.hidden = true;
      toast(`A training step failed: ${e.error}`, "error");
    } else if (e.type === "refused") {
      void refreshRefused();
    } else if (e.type === "published" || e.type === "settings" || e.type === "sample" || e.type === "judged") {
      void refresh(false);
    }
  });
}

/** Called by the router when the view is shown. */
export async function showTrain(): Promise<void> {
  await refresh(true);
}

async function refresh(all: boolean): Promise<void> {
  const t = await attempt(() => api("GET", "/studio/training"));
  if (t) {
    showStatus(t);
    syncForm(t.settings);
  }
  const v = await attempt(() => api("GET", "/studio/versions"));
  if (v) renderVersions(v.versions);
  if (all) {
    await refreshRefused();
    await refreshFirstAnswers();
    const s = await attempt(() => api<{ steps: Step[] }>("GET", "/studio/steps?limit=1000"));
    if (s) {
      steps = s.steps;
      drawCharts();
    }
  }
}

function showStatus(t: any): void {
  paused = !!t.settings.paused;
  pauseBtn.textContent = paused ? "Resume" : "Pause";
  fill(
    status,
    h("span", { class: "pill version" }, `serving v${t.policy_version}`),
    h("span", { class: `pill ${paused ? "bad" : "good"}` }, paused ? "paused" : "training on"),
    h("span", { class: "pill", "data-testid": "pending" }, `${plural(t.pending_samples, "sample")} queued (batch ${t.settings.batch_size})`),
    h("span", { class: "pill" }, `${plural(t.unjudged, "next state")} waiting for the judge`),
    h("span", { class: "pill" }, `${plural(t.steps, "step")} · ${plural(t.samples, "sample")} so far`),
    h("span", { class: "pill" }, `method ${t.settings.method} · selection ${t.settings.selection}`),
  );
}

interface Refused {
  at: number;
  method: string;
  path: string;
  status: number;
  reason: string;
  session_id: string | null;
}

/** The latest refused requests, newest first. */
async function refreshRefused(): Promise<void> {
  const r = await attempt(() => api<{ refused: Refused[] }>("GET", "/studio/refused"));
  if (!r) return;
  fill(
    refused,
    r.refused.length
      ? [
          h("tr", {}, h("th", {}, "when"), h("th", {}, "request"), h("th", {}, "status"), h("th", {}, "session"), h("th", {}, "why")),
          ...r.refused.slice(0, 20).map((x) =>
            h(
              "tr",
              {},
              h("td", {}, new Date(x.at).toLocaleTimeString()),
              h("td", {}, `${x.method} ${x.path}`),
              h("td", { class: "num" }, x.status),
              h("td", {}, x.session_id ?? "—"),
              h("td", {}, x.reason),
            ),
          ),
        ]
      : h("tr", {}, h("td", { class: "muted" }, "None so far.")),
  );
}

function renderVersions(list: { version: number; step: number; parent: number | null; created_at: number; active: boolean }[]): void {
  fill(
    versions,
    h("tr", {}, h("th", {}, "version"), h("th", {}, "trained from"), h("th", {}, "after step"), h("th", {}, "created"), h("th", {}, "")),
    [...list].reverse().map((v) => {
      const b = h("button", { "data-testid": `activate-${v.version}` }, v.version === 0 ? "Back to base" : "Roll back to this");
      b.addEventListener("click", async () => {
        const r = await attempt(() => api("POST", `/studio/versions/${v.version}/activate`));
        if (r) {
          toast(`Now serving v${r.active}; training continues from it.`);
          await refresh(false);
        }
      });
      return h(
        "tr",
        { class: v.active ? "active" : "", "data-version": v.version },
        h("td", {}, `v${v.version}`),
        h("td", {}, v.parent === null ? "—" : `v${v.parent}`),
        h("td", { class: "num" }, v.step),
        h("td", {}, v.created_at ? new Date(v.created_at).toLocaleTimeString() : "base"),
        h("td", {}, v.active ? h("span", { class: "pill good" }, "serving") : b),
      );
    }),
  );
}

/** Shows `settings` in the form, building it the first time; a field being edited keeps its
 * text. */
function syncForm(settings: Record<string, any>): void {
  if (!form.elements.length) {
    renderForm(settings);
    return;
  }
  for (const [key] of FIELDS) {
    const el = form.elements.namedItem(key) as HTMLInputElement | HTMLSelectElement | null;
    if (el && el !== document.activeElement && settings[key] !== undefined) el.value = String(settings[key]);
  }
}

function renderForm(settings: Record<string, any>): void {
  fill(
    form,
    FIELDS.map(([key, label, kind, options]) => {
      const input =
        kind === "select"
          ? h("select", { name: key }, (options ?? []).map((o) => h("option", { value: o, selected: settings[key] === o }, o)))
          : h("input", { name: key, type: "number", step: "any", value: settings[key] });
      return h("label", {}, h("span", {}, label), input);
    }),
    h("button", { class: "primary", type: "submit", "data-testid": "settings-save" }, "Apply"),
  );
}

async function saveSettings(): Promise<void> {
  const patch: Record<string, string | number> = {};
  for (const [key, , kind] of FIELDS) {
    const el = form.elements.namedItem(key) as HTMLInputElement | HTMLSelectElement | null;
    if (!el) continue;
    if (kind === "number") {
      const v = Number(el.value);
      if (el.value.trim() === "" || !Number.isFinite(v)) {
        toast(`${key} must be a number`, "error");
        return;
      }
      patch[key] = v;
    } else patch[key] = el.value;
  }
  const r = await attempt(() => api("POST", "/studio/training/settings", patch));
  if (r) {
    toast("Settings applied: the next step uses them.");
    showStatus(r);
  }
}

/** Reloads how each recent session's first answer was judged, and redraws. */
async function refreshFirstAnswers(): Promise<void> {
  const r = await attempt(() =>
    api<{ sessions: { reward: number | null }[] }>("GET", "/studio/first-answers?limit=200"),
  );
  if (!r) return;
  firstAnswers = r.sessions.filter((s) => s.reward !== null).map((s) => (s.reward === 1 ? 1 : 0));
  drawCharts();
}

/** The share of accepted first answers over the last `n` sessions, at every session. */
function rolling(xs: number[], n: number): number[] {
  return xs.map((_, i) => {
    const w = xs.slice(Math.max(0, i - n + 1), i + 1);
    return w.reduce((a, b) => a + b, 0) / w.length;
  });
}

function drawCharts(): void {
  const satisfied = rolling(firstAnswers, 5);
  const sessionsCanvas = h("canvas", { width: 260, height: 110 });
  plot(sessionsCanvas, satisfied, "no judged session yet");
  const last = satisfied.length ? satisfied[satisfied.length - 1] : undefined;
  const sessionsChart = h(
    "figure",
    { class: "chart", "data-metric": "first_answers", "data-testid": "first-answers" },
    h(
      "figcaption",
      {},
      "first answers accepted, per session (last 5)",
      h("span", { class: "num" }, last === undefined ? "—" : last.toFixed(2)),
    ),
    sessionsCanvas,
  );
  fill(
    charts,
    sessionsChart,
    ...CURVES.map(([key, label]) => {
      const ys = steps.map((s) => s.metrics[key]).filter((v): v is number => typeof v === "number" && Number.isFinite(v));
      const last = ys.length ? ys[ys.length - 1] : undefined;
      const canvas = h("canvas", { width: 260, height: 110 });
      plot(canvas, ys);
      return h(
        "figure",
        { class: "chart", "data-metric": key },
        h("figcaption", {}, label, h("span", { class: "num" }, last === undefined ? "—" : last.toFixed(3))),
        canvas,
      );
    }),
  );
}

/** A line through the values, scaled to the canvas, with the range written at the side. */
function plot(canvas: HTMLCanvasElement, ys: number[], empty = "no steps yet"): void {
  const g = canvas.getContext("2d");
  if (!g) return;
  const { width: w, height: ht } = canvas;
  g.clearRect(0, 0, w, ht);
  g.strokeStyle = "#ddd";
  g.strokeRect(0.5, 0.5, w - 1, ht - 1);
  if (!ys.length) {
    g.fillStyle = "#999";
    g.font = "12px sans-serif";
    g.fillText(empty, 10, ht / 2);
    return;
  }
  let lo = Math.min(...ys);
  let hi = Math.max(...ys);
  if (hi - lo < 1e-9) {
    lo -= 0.5;
    hi += 0.5;
  }
  const pad = 8;
  const x = (i: number) => pad + ((w - 2 * pad) * i) / Math.max(1, ys.length - 1);
  const y = (v: number) => ht - pad - ((ht - 2 * pad) * (v - lo)) / (hi - lo);
  g.strokeStyle = "#3b62d6";
  g.lineWidth = 1.5;
  g.beginPath();
  ys.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.stroke();
  g.fillStyle = "#3b62d6";
  ys.forEach((v, i) => g.fillRect(x(i) - 1.5, y(v) - 1.5, 3, 3));
  g.fillStyle = "#777";
  g.font = "10px sans-serif";
  g.fillText(hi.toPrecision(3), 2, 10);
  g.fillText(lo.toPrecision(3), 2, ht - 2);
}
