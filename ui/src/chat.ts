// Chat: streaming replies from the live policy, feedback on every answer, and what became of
// each turn (its version, its type, its next state, the judge's vote).

import { api, onEvent, streamChat, TurnInfo } from "./api.js";
import { attempt, fill, h, signed, toast } from "./dom.js";
import { showTurn } from "./inspect.js";

interface Message {
  role: "user" | "assistant";
  content: string;
}

let sessionId = newSessionId();
let history: Message[] = [];
let busy = false;
/** Status lines of rendered answers, by turn id, updated from the event stream. */
const turnStatus = new Map<number, HTMLElement>();

function newSessionId(): string {
  return `studio-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Builds the Chat view into `root`. */
export function mountChat(root: HTMLElement): void {
  const log = h("div", { class: "chat-log", "data-testid": "chat-log" });
  const input = h("textarea", {
    class: "chat-input",
    rows: 3,
    placeholder: "Message your assistant (Enter sends, Shift+Enter for a new line)",
    "data-testid": "chat-input",
  });
  const send = h("button", { class: "primary", "data-testid": "chat-send" }, "Send");
  const sessionLabel = h("span", { class: "muted", "data-testid": "session-id" }, sessionId);
  const reset = h("button", { title: "Start a new session" }, "New session");

  const submit = async () => {
    const text = input.value.trim();
    if (!text || busy) return;
    input.value = "";
    await ask(log, text, send);
  };
  send.addEventListener("click", submit);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      void submit();
    }
  });
  reset.addEventListener("click", () => {
    sessionId = newSessionId();
    history = [];
    sessionLabel.textContent = sessionId;
    fill(log);
  });

  fill(
    root,
    h("div", { class: "toolbar" }, h("span", {}, "Session "), sessionLabel, reset),
    log,
    h("div", { class: "chat-compose" }, input, send),
  );

  onEvent((e) => {
    const line = e.turn_id !== undefined ? turnStatus.get(e.turn_id) : undefined;
    if (!line) return;
    if (e.type === "next_state") addStatus(line, `next state: ${e.kind}`);
    else if (e.type === "judged") {
      addStatus(line, `judged ${signed(e.reward)}`, e.reward > 0 ? "good" : e.reward < 0 ? "bad" : "");
      if (e.used?.length) addStatus(line, e.used.length > 1 ? `${e.used.length} hints chosen` : "hint chosen");
      if (e.sample_id) addStatus(line, "sample queued");
    }
  });
}

/** A thumb icon drawn inline: emoji fonts are not everywhere. */
function thumbIcon(): SVGSVGElement {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute(
    "d",
    "M2 21h4V9H2v12zm20-11c0-1.1-.9-2-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.4-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10c0 1.1.9 2 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z",
  );
  svg.append(path);
  return svg;
}

function addStatus(line: HTMLElement, text: string, kind = ""): void {
  line.append(h("span", { class: `pill ${kind}` }, text));
}

async function ask(log: HTMLElement, text: string, send: HTMLButtonElement): Promise<void> {
  busy = true;
  send.disabled = true;
  history.push({ role: "user", content: text });
  log.append(h("div", { class: "msg user" }, h("div", { class: "bubble" }, text)));
  const body = h("div", { class: "bubble streaming", "data-testid": "assistant-text" });
  const meta = h("div", { class: "meta" }, h("span", { class: "muted" }, "generating…"));
  const msg = h("div", { class: "msg assistant" }, body, meta);
  log.append(msg);
  log.scrollTop = log.scrollHeight;
  let reply = "";
  try {
    const info = await streamChat(sessionId, history, (piece) => {
      reply += piece;
      body.textContent = reply;
      log.scrollTop = log.scrollHeight;
    });
    history.push({ role: "assistant", content: reply });
    body.classList.remove("streaming");
    renderMeta(meta, info);
  } catch (e) {
    history.pop();
    body.classList.remove("streaming");
    body.classList.add("failed");
    body.textContent = reply || "(no answer)";
    fill(meta, h("span", { class: "pill bad" }, e instanceof Error ? e.message : String(e)));
    toast(`The answer failed: ${e instanceof Error ? e.message : e}`, "error");
  } finally {
    busy = false;
    send.disabled = false;
  }
}

function renderMeta(meta: HTMLElement, info: TurnInfo): void {
  const id = info.turn_id;
  const status = h("span", { class: "status", "data-testid": "turn-status" });
  fill(
    meta,
    h("span", { class: "pill version", "data-testid": "turn-version" }, `v${info.policy_version ?? "?"}`),
    h("span", { class: "pill" }, info.turn_type ?? "main"),
    info.finish_reason === "length" ? h("span", { class: "pill" }, "cut at max tokens") : null,
    status,
  );
  if (id === undefined) return;
  turnStatus.set(id, status);
  const form = h("div", { class: "correction", hidden: true });
  const box = h("textarea", {
    rows: 2,
    placeholder: "What should the answer have been or done?",
    "data-testid": "correction-text",
  });
  const submit = h("button", { class: "primary", "data-testid": "correction-send" }, "Send");
  let thumb: number | undefined;
  const openForm = (t: number | undefined) => {
    thumb = t;
    form.hidden = false;
    box.placeholder =
      t === -1 ? "What was wrong? (optional: a correction becomes a hint)" : "What should the answer have been or done?";
    box.focus();
  };
  submit.addEventListener("click", async () => {
    const correction = box.value.trim();
    if (thumb === undefined && !correction) {
      toast("Write the correction first.", "error");
      return;
    }
    const ok = await attempt(() =>
      api("POST", `/studio/turns/${id}/feedback`, {
        ...(thumb !== undefined ? { thumb } : {}),
        ...(correction ? { correction } : {}),
      }),
    );
    if (ok) {
      form.hidden = true;
      addStatus(status, thumb === -1 ? "👎 sent" : "correction sent");
    }
  });
  form.append(box, submit);
  const up = h("button", { class: "icon", title: "👍 Good answer", "aria-label": "thumbs up", "data-testid": "thumb-up" }, thumbIcon());
  up.addEventListener("click", async () => {
    if (await attempt(() => api("POST", `/studio/turns/${id}/feedback`, { thumb: 1 }))) {
      addStatus(status, "👍 sent", "good");
    }
  });
  const down = h("button", { class: "icon down", title: "👎 Bad answer", "aria-label": "thumbs down", "data-testid": "thumb-down" }, thumbIcon());
  down.addEventListener("click", () => openForm(-1));
  const correct = h("button", { title: "Write what it should have said", "data-testid": "correct" }, "Correct this");
  correct.addEventListener("click", () => openForm(undefined));
  const inspect = h("button", { title: "Tokens, top-k and overlap" }, `Inspect #${id}`);
  inspect.addEventListener("click", () => showTurn(id));
  meta.append(h("span", { class: "actions" }, up, down, correct, inspect));
  meta.after(form);
}
