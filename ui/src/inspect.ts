// Inspect: one response's tokens coloured by overlap, advantage or the teacher's gap; hovering a
// token shows the student's and the teacher's top-k; the selected hint beside those it beat.

import { api } from "./api.js";
import { attempt, fill, h, pct, showToken } from "./dom.js";

/** [token id, text, log-prob] as the API sends top-k entries. */
export type TopEntry = [number, string, number];

/** One candidate hint scored as a teacher (the API's `analysis.hints[h]`). */
export interface HintAnalysis {
  hint: string;
  overlap: number[];
  overlap_total: number;
  delta: number[][];
  delta_clipped: number;
  teacher: TopEntry[][];
}

/** The API's analysis of a turn under the live policy. */
export interface Analysis {
  k: number;
  mode: string;
  chosen: number | null;
  totals: number[];
  per_position: number[];
  positions: { id: number; token: string; logprob: number; student: TopEntry[] }[];
  hints: HintAnalysis[];
}

type Colour = "overlap" | "advantage" | "delta";

/** `hint` value meaning "the hint token-mode selection chose at each position" (h*_i). */
export const PER_POSITION = -2;

/** The candidate whose teacher is shown at position i: `hint`, or h*_i in token mode. */
function hintAt(a: Analysis, hint: number, i: number): number {
  return hint === PER_POSITION ? (a.per_position[i] ?? -1) : hint;
}

/** Opens a turn in the Inspect view. */
export function showTurn(id: number): void {
  location.hash = `#inspect/${id}`;
}

let idInput: HTMLInputElement;
let body: HTMLElement;
let colour: Colour = "overlap";
let current: { turnId: number; advantage: number | null; analysis: Analysis } | null = null;

/** Builds the Inspect view into `root`. */
export function mountInspect(root: HTMLElement): void {
  idInput = h("input", { type: "number", min: 1, placeholder: "turn #", "data-testid": "inspect-id" });
  const load = h("button", { class: "primary" }, "Inspect");
  load.addEventListener("click", () => {
    const id = Number(idInput.value);
    if (Number.isInteger(id) && id > 0) showTurn(id);
  });
  idInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") load.click();
  });
  const mode = h(
    "select",
    { "data-testid": "inspect-colour", title: "What the token colours show" },
    h("option", { value: "overlap" }, "colour by overlap O[h*,i]"),
    h("option", { value: "advantage" }, "colour by advantage r_t"),
    h("option", { value: "delta" }, "colour by the teacher's gap Δ"),
  );
  mode.addEventListener("change", () => {
    colour = mode.value as Colour;
    render();
  });
  body = h("div", { class: "inspect-body" }, h("p", { class: "muted" }, "Pick a turn from Chat or Annotate, or type its number."));
  fill(root, h("div", { class: "toolbar" }, h("span", {}, "Turn"), idInput, load, mode), body);
}

/** Loads a turn into the Inspect view (called by the router). */
export async function loadInspect(id: number): Promise<void> {
  idInput.value = String(id);
  fill(body, h("p", { class: "muted" }, `Scoring turn #${id} under every hint…`));
  const r = await attempt(() => api("GET", `/studio/turns/${id}/inspect`));
  if (!r) {
    fill(body, h("p", { class: "muted" }, `Turn #${id} could not be inspected.`));
    return;
  }
  current = { turnId: id, advantage: r.advantage ?? null, analysis: r.analysis };
  render();
}

function render(): void {
  if (!current) return;
  const { analysis: a, advantage } = current;
  // Token mode with several hints chosen: each position shows its own h*_i.
  const chosen = a.chosen ?? (a.per_position.length ? PER_POSITION : -1);
  const detail = h("div", { class: "token-detail", "data-testid": "token-detail" }, h("p", { class: "muted" }, "Hover a token."));
  const strip = tokenStrip(a, chosen, colour, advantage, (i) => fill(detail, tokenDetail(a, chosen, i)));
  const hints = a.hints.length
    ? h(
        "table",
        { class: "hints", "data-testid": "inspect-hints" },
        h("tr", {}, h("th", {}, "candidate hint"), h("th", {}, "overlap total"), h("th", {}, "|Δ| clipped"), h("th", {}, "")),
        a.hints.map((x, i) =>
          h(
            "tr",
            { class: i === chosen || (chosen === PER_POSITION && a.per_position.includes(i)) ? "chosen" : "" },
            h("td", {}, x.hint),
            h("td", { class: "num" }, x.overlap_total),
            h("td", { class: "num" }, `${(x.delta_clipped * 100).toFixed(0)}%`),
            h(
              "td",
              {},
              i === chosen
                ? `selected (${a.mode})`
                : chosen === PER_POSITION
                  ? `h*_i at ${a.per_position.filter((p) => p === i).length} of ${a.per_position.length} positions`
                  : chosen >= 0
                    ? `beaten by ${a.totals[chosen] - x.overlap_total}`
                    : "",
            ),
          ),
        ),
      )
    : h("p", { class: "muted" }, "No hints for this turn yet: colours by overlap need one.");
  fill(
    body,
    h(
      "p",
      { class: "muted" },
      `k = ${a.k}, selection ${a.mode}, advantage r_t = ${advantage ?? "none yet"}. Colours: `,
      colourLegend(colour),
    ),
    h("div", { class: "inspect-main" }, strip, detail),
    hints,
  );
}

function colourLegend(c: Colour): string {
  if (c === "overlap") return "darker = more of the student's top-k shared with the teacher's.";
  if (c === "advantage") return "green = rewarded, red = penalised (r_t broadcast to every token).";
  return "green = the teacher raises this token, red = it lowers it (Δ, clipped to ±C).";
}

/** The teacher's gap Δ on the token actually generated at position i (0 when it is outside S_i). */
function sampledDelta(a: Analysis, hint: number, i: number): number {
  const p = a.positions[i];
  const j = p.student.findIndex((e) => e[0] === p.id);
  return hint >= 0 && j >= 0 ? (a.hints[hint].delta[i]?.[j] ?? 0) : 0;
}

/** The response as coloured tokens; `onHover(i)` fires on hover and focus. */
export function tokenStrip(
  a: Analysis,
  hint: number,
  colour: Colour,
  advantage: number | null,
  onHover: (i: number) => void,
): HTMLElement {
  const strip = h("div", { class: "token-strip", "data-testid": "token-strip" });
  a.positions.forEach((p, i) => {
    let bg = "transparent";
    let title = "";
    const hi = hintAt(a, hint, i);
    if (colour === "overlap" && hi >= 0) {
      const o = a.hints[hi].overlap[i] ?? 0;
      bg = `rgba(70, 110, 230, ${(0.1 + (0.8 * o) / Math.max(1, a.k)).toFixed(2)})`;
      title = `O = ${o}/${a.k}`;
    } else if (colour === "advantage" && advantage !== null) {
      bg = advantage > 0 ? "rgba(40,170,90,0.45)" : advantage < 0 ? "rgba(220,60,60,0.45)" : "transparent";
      title = `r_t = ${advantage}`;
    } else if (colour === "delta") {
      const d = sampledDelta(a, hi, i);
      bg = d >= 0 ? `rgba(40,170,90,${Math.min(0.8, Math.abs(d)).toFixed(2)})` : `rgba(220,60,60,${Math.min(0.8, Math.abs(d)).toFixed(2)})`;
      title = `Δ = ${d.toFixed(3)}`;
    }
    const span = h("span", { class: "tok", tabindex: 0, title, "data-pos": i }, showToken(p.token));
    span.style.background = bg;
    span.addEventListener("mouseenter", () => onHover(i));
    span.addEventListener("focus", () => onHover(i));
    strip.append(span);
  });
  return strip;
}

/** The student's and the teacher's top-k at position i, with O[h,i] and Δ. */
export function tokenDetail(a: Analysis, hint: number, i: number): HTMLElement {
  const p = a.positions[i];
  const hi = hintAt(a, hint, i);
  const x = hi >= 0 ? a.hints[hi] : undefined;
  const teacherIds = new Set((x?.teacher[i] ?? []).slice(0, a.k).map((e) => e[0]));
  const studentIds = new Set(p.student.map((e) => e[0]));
  const list = (entries: TopEntry[], shared: Set<number>, deltas?: number[]) =>
    h(
      "table",
      { class: "topk" },
      entries.slice(0, a.k).map((e, j) =>
        h(
          "tr",
          { class: shared.has(e[0]) ? "shared" : "" },
          h("td", { class: "tokname" }, showToken(e[1])),
          h("td", { class: "num" }, pct(e[2])),
          deltas ? h("td", { class: "num" }, `Δ ${deltas[j]?.toFixed(2) ?? ""}`) : null,
        ),
      ),
    );
  return h(
    "div",
    {},
    h("h4", {}, `position ${i}: “${showToken(p.token)}” (${pct(p.logprob)})`),
    x ? h("p", {}, `O[h*,${i}] = ${x.overlap[i]} of ${a.k}`) : null,
    h("div", { class: "topk-pair" },
      h("div", {}, h("h5", {}, "student top-k"), list(p.student, teacherIds, x?.delta[i])),
      x ? h("div", {}, h("h5", {}, "teacher top-k (with the hint)"), list(x.teacher[i] ?? [], studentIds)) : null,
    ),
  );
}
