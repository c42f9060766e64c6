// Annotate: the queue of judged turns; the judge's vote and hints; candidate hints written by a
// person, each previewed (per-token overlap O[h,i] and Δ) before it is accepted or rejected.

import { api, onEvent } from "./api.js";
import { attempt, fill, h, signed, toast } from "./dom.js";
import { Analysis, showTurn, tokenDetail, tokenStrip } from "./inspect.js";

interface Hint {
  id: number;
  text: string;
  source: string;
  author: string;
  status: "candidate" | "accepted" | "rejected";
  overlap: number | null;
}

interface Item {
  turn_id: number;
  session_id: string;
  messages: { role: string; content: string }[];
  response: string;
  policy_version: number;
  next_states: { kind: string; text: string }[];
  /** `value` is null when the judge's answer held no readable vote (it takes no part in r_t). */
  votes: { judge: string; value: number | null; raw: string }[];
  hints: Hint[];
}

let items: Item[] = [];
let selected = 0;
let list: HTMLElement;
let detail: HTMLElement;
let hintBox: HTMLTextAreaElement;
let previewBox: HTMLElement;
let active = false;

/** Builds the Annotate view into `root`. */
export function mountAnnotate(root: HTMLElement): void {
  list = h("ol", { class: "queue", "data-testid": "queue" });
  detail = h("div", { class: "annotate-detail" });
  hintBox = h("textarea", {
    rows: 2,
    placeholder: "A candidate hint: what should the assistant have known or done? (/ to focus)",
    "data-testid": "hint-text",
  });
  const preview = h("button", { "data-testid": "hint-preview", title: "Ctrl+Enter" }, "Preview");
  preview.addEventListener("click", () => void previewHint());
  const add = h("button", { class: "primary", "data-testid": "hint-add", title: "Ctrl+S" }, "Add as candidate");
  add.addEventListener("click", () => void addHint());
  previewBox = h("div", { class: "preview", "data-testid": "hint-preview-result" });
  hintBox.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && e.ctrlKey) {
      e.preventDefault();
      void previewHint();
    } else if (e.key === "s" && e.ctrlKey) {
      e.preventDefault();
      void addHint();
    } else if (e.key === "Escape") hintBox.blur();
  });
  fill(
    root,
    h(
      "p",
      { class: "muted shortcuts" },
      "Keys: j / k next / previous turn · / write a hint · Ctrl+Enter preview · Ctrl+S add · a accept · x reject · i inspect",
    ),
    h(
      "div",
      { class: "annotate" },
      h("div", { class: "queue-pane" }, h("h3", {}, "Judged turns"), list),
      h("div", { class: "detail-pane" }, detail, h("div", { class: "hint-compose" }, hintBox, h("div", {}, preview, add)), previewBox),
    ),
  );
  document.addEventListener("keydown", onKey);
  let pending: number | undefined;
  onEvent((e) => {
    if (e.type !== "judged" && e.type !== "hint") return;
    clearTimeout(pending);
    pending = window.setTimeout(() => void refresh(), 300);
  });
}

/** Called by the router when the view is shown or hidden. */
export function setAnnotateActive(on: boolean): void {
  active = on;
  if (on) void refresh();
}

function onKey(e: KeyboardEvent): void {
  if (!active || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target as HTMLElement;
  if (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT") return;
  const it = items[selected];
  const candidate = it?.hints.find((x) => x.status === "candidate");
  if (e.key === "j") select(Math.min(items.length - 1, selected + 1));
  else if (e.key === "k") select(Math.max(0, selected - 1));
  else if (e.key === "/") {
    e.preventDefault();
    hintBox.focus();
  } else if (e.key === "a" && candidate) void decide(candidate.id, "accept");
  else if (e.key === "x" && candidate) void decide(candidate.id, "reject");
  else if (e.key === "i" && it) showTurn(it.turn_id);
}

async function refresh(): Promise<void> {
  const r = await attempt(() => api<{ queue: Item[] }>("GET", "/studio/queue?limit=100"));
  if (!r) return;
  const keep = items[selected]?.turn_id;
  // Re-render only what changed, so that nothing moves under the pointer needlessly.
  const same = JSON.stringify(items) === JSON.stringify(r.queue);
  items = r.queue;
  const i = items.findIndex((x) => x.turn_id === keep);
  selected = i >= 0 ? i : 0;
  if (same && list.childElementCount) return;
  renderList();
  renderDetail();
}

function select(i: number): void {
  if (i === selected || !items[i]) return;
  selected = i;
  fill(previewBox);
  renderList();
  renderDetail();
  list.children[i]?.scrollIntoView({ block: "nearest" });
}

function voteOf(it: Item): number | undefined {
  const readable = it.votes.filter((v) => v.value !== null);
  return readable.length ? readable.reduce((s, v) => s + (v.value ?? 0), 0) : undefined;
}

function renderList(): void {
  if (!items.length) {
    fill(list, h("li", { class: "muted" }, "Nothing judged yet: chat, then reply or give feedback."));
    return;
  }
  fill(
    list,
    items.map((it, i) => {
      const v = voteOf(it);
      const li = h(
        "li",
        { class: i === selected ? "selected" : "", "data-turn": it.turn_id },
        h("span", { class: `pill ${v === undefined ? "" : v > 0 ? "good" : v < 0 ? "bad" : ""}` }, v === undefined ? "·" : signed(Math.sign(v))),
        ` #${it.turn_id} `,
        (it.messages.at(-1)?.content ?? "").slice(0, 60),
        it.hints.some((x) => x.status === "candidate") ? h("span", { class: "pill" }, "candidate") : null,
      );
      li.addEventListener("click", () => select(i));
      return li;
    }),
  );
}

function renderDetail(): void {
  const it = items[selected];
  if (!it) {
    fill(detail);
    return;
  }
  fill(
    detail,
    h("h3", {}, `Turn #${it.turn_id} · v${it.policy_version} · session ${it.session_id}`),
    h("div", { class: "convo" }, it.messages.map((m) => h("div", { class: `line ${m.role}` }, h("b", {}, `${m.role}: `), m.content))),
    h("div", { class: "line assistant" }, h("b", {}, "assistant: "), it.response),
    h("h4", {}, "Next states"),
    h("ul", {}, it.next_states.map((n) => h("li", {}, h("span", { class: "pill" }, n.kind), " ", n.text))),
    h("h4", {}, "Votes"),
    h("ul", {}, it.votes.map((v) => h("li", {}, v.value === null ? h("span", { class: "pill" }, "unreadable") : h("span", { class: `pill ${v.value > 0 ? "good" : v.value < 0 ? "bad" : ""}` }, signed(v.value)), ` ${v.raw.startsWith(`${v.judge}:`) ? v.raw : `${v.judge}: ${v.raw}`}`))),
    h("h4", {}, "Hints"),
    it.hints.length
      ? h(
          "table",
          { class: "hints", "data-testid": "hint-list" },
          h("tr", {}, h("th", {}, "hint"), h("th", {}, "from"), h("th", {}, "overlap"), h("th", {}, "status"), h("th", {}, "")),
          it.hints.map((x) =>
            h(
              "tr",
              { class: x.status },
              h("td", {}, x.text),
              h("td", {}, `${x.source} (${x.author})`),
              h("td", { class: "num" }, x.overlap ?? "—"),
              h("td", { "data-testid": "hint-status" }, x.status),
              h(
                "td",
                {},
                x.status !== "accepted" ? button("Accept", "hint-accept", () => decide(x.id, "accept")) : null,
                x.status === "candidate" ? button("Reject", "hint-reject", () => decide(x.id, "reject")) : null,
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No hints: the judge found nothing directive. Write one below."),
  );
}

function button(label: string, testid: string, f: () => Promise<void>): HTMLButtonElement {
  const b = h("button", { "data-testid": testid }, label);
  b.addEventListener("click", () => void f());
  return b;
}

async function decide(hintId: number, what: "accept" | "reject"): Promise<void> {
  const r = await attempt(() => api("POST", `/studio/hints/${hintId}/${what}`));
  if (r) {
    toast(what === "accept" ? `Hint accepted: its OPD sample is queued (sample ${r.sample_id}).` : "Hint rejected.");
    await refresh();
  }
}

/** The selected turn and the hint being written, or a message saying what is missing. */
function hintDraft(): { it: Item; text: string } | undefined {
  const it = items[selected];
  const text = hintBox.value.trim();
  if (!it || !text) {
    toast("Select a turn and write a hint first.", "error");
    return undefined;
  }
  return { it, text };
}

async function previewHint(): Promise<void> {
  const draft = hintDraft();
  if (!draft) return;
  const { it, text } = draft;
  fill(previewBox, h("p", { class: "muted" }, "Scoring the teacher under this hint…"));
  const r = await attempt(() =>
    api<{ analysis: Analysis; candidate: { overlap_total: number; delta_clipped: number }; would_be_chosen: boolean }>(
      "POST",
      `/studio/turns/${it.turn_id}/hints/preview`,
      { text },
    ),
  );
  if (!r) {
    fill(previewBox);
    return;
  }
  const a = r.analysis;
  const mine = a.hints.length - 1;
  const hover = h("div", { class: "token-detail" }, h("p", { class: "muted" }, "Hover a token for both top-k."));
  const others = a.hints
    .slice(0, mine)
    .map((x) => `${x.overlap_total} (“${x.hint.slice(0, 40)}”)`)
    .join(", ");
  fill(
    previewBox,
    h(
      "p",
      { "data-testid": "preview-summary" },
      h("b", {}, `overlap total ${r.candidate.overlap_total}`),
      ` of ${a.positions.length * a.k} possible; Δ clipped at ${(r.candidate.delta_clipped * 100).toFixed(0)}% of top-k entries; `,
      r.would_be_chosen ? h("span", { class: "pill good" }, `would be chosen (${a.mode})`) : h("span", { class: "pill" }, "would not be chosen"),
      others ? ` · other candidates: ${others}` : "",
    ),
    h("div", { class: "inspect-main" }, tokenStrip(a, mine, "overlap", null, (i) => fill(hover, tokenDetail(a, mine, i))), hover),
  );
}

async function addHint(): Promise<void> {
  const draft = hintDraft();
  if (!draft) return;
  const { it, text } = draft;
  const r = await attempt(() => api("POST", `/studio/turns/${it.turn_id}/hints`, { text }));
  if (r) {
    hintBox.value = "";
    toast(`Candidate hint added (overlap total ${r.hint.overlap ?? "—"}). Accept it to train on it.`);
    await refresh();
  }
}
