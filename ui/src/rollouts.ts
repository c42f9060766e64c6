// Rollouts: the episodes of general agents (DESIGN.md §8), grouped by task. A rollout is a
// session of a group; each step shows the action, the observation that followed (its next
// state), its reward R_t = o + mean vote, and the advantage it trained with (R_t standardised
// among the batch's steps of the same index).

import { api, onEvent } from "./api.js";
import { attempt, fill, h, signed } from "./dom.js";

interface Session {
  id: string;
  group_id: string | null;
  outcome: number | null;
  done: boolean;
  turns: number;
  last_seen: number;
}

interface StepTurn {
  id: number;
  response: string;
  policy_version: number;
  next_states: { kind: string; text: string }[];
  votes: { value: number | null }[];
  advantage: number | null;
  sample_status: string | null;
}

let list: HTMLElement;
let current: string | undefined;
const round = (v: number) => Math.round(v * 100) / 100;
let detail: HTMLElement;

/** Builds the Rollouts view into `root`. */
export function mountRollouts(root: HTMLElement): void {
  list = h("div", { class: "queue", "data-testid": "rollout-groups" });
  detail = h("div", { class: "rollout-detail", "data-testid": "rollout-steps" });
  fill(
    root,
    h(
      "p",
      { class: "muted" },
      "Episodes from clawrl agent train, or from any client that sends a group_id (and its outcome with session_done).",
    ),
    h("div", { class: "annotate" }, h("div", { class: "queue-pane" }, h("h3", {}, "Groups"), list), h("div", { class: "detail-pane" }, detail)),
  );
  // While shown, follow the loop: new steps, their votes, the advantages a step trained with.
  let pending: number | undefined;
  onEvent((e) => {
    if (root.hidden || !["turn", "judged", "trained"].includes(e.type)) return;
    clearTimeout(pending);
    pending = window.setTimeout(() => void showRollouts(current), 500);
  });
}

/** Loads the latest rollouts, grouped by task; opens `session` when given. */
export async function showRollouts(session?: string): Promise<void> {
  current = session;
  await attempt(async () => {
    const r = await api<{ sessions: Session[] }>("GET", "/studio/sessions?limit=200");
    const groups = new Map<string, Session[]>();
    for (const s of r.sessions) {
      if (s.group_id === null) continue;
      groups.set(s.group_id, [...(groups.get(s.group_id) ?? []), s]);
    }
    if (groups.size === 0) {
      fill(list, h("p", { class: "muted" }, "No rollout yet."));
      fill(detail);
      return;
    }
    fill(
      list,
      [...groups].map(([g, members]) => {
        const solved = members.filter((m) => (m.outcome ?? 0) > 0).length;
        return h(
          "div",
          { class: "group" },
          h("h4", {}, `${g} · ${solved}/${members.length} solved`),
          h(
            "ul",
            {},
            members.map((m) =>
              h(
                "li",
                {},
                h("a", { href: `#rollouts/${encodeURIComponent(m.id)}` }, m.id),
                ` · o = ${m.outcome ?? (m.done ? "none" : "running")}`,
              ),
            ),
          ),
        );
      }),
    );
    if (session) await showRollout(decodeURIComponent(session));
  });
}

async function showRollout(id: string): Promise<void> {
  const r = await api<{ session: Session; turns: StepTurn[] }>("GET", `/studio/sessions/${encodeURIComponent(id)}`);
  const mean = (t: StepTurn) => {
    const v = t.votes.map((x) => x.value).filter((x): x is number => x !== null);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : 0;
  };
  const o = r.session.outcome ?? 0;
  const rows = r.turns
    // The last request only delivers the outcome: nothing follows its answer.
    .filter((t) => t.next_states.length > 0)
    .map((t, i) =>
      h(
        "tr",
        { "data-testid": "rollout-step" },
        h("td", {}, i),
        h("td", {}, h("pre", {}, t.response)),
        h("td", {}, h("pre", {}, t.next_states.map((n) => `[${n.kind}] ${n.text}`).join("\n"))),
        h("td", { title: `o ${o} + mean vote ${round(mean(t))}` }, signed(round(o + mean(t)))),
        h("td", {}, t.advantage === null ? "–" : signed(round(t.advantage))),
        h("td", {}, t.sample_status ?? "–"),
      ),
    );
  fill(
    detail,
    h("h3", {}, `${id}: outcome ${r.session.outcome ?? "none"}`),
    h(
      "table",
      { class: "steps" },
      h("tr", {}, ["t", "action", "observation", "reward R_t", "advantage", "sample"].map((c) => h("th", {}, c))),
      rows,
    ),
  );
}
