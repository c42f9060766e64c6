// The Studio speaks to the engine only through its HTTP API and event stream, exactly as any
// browser would: the desktop shell adds nothing here.

/** An error the server answered with (OpenAI's error body) or a network failure. */
export class ApiError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

const KEY = "clawrl.key";

/** The API key saved in this browser, if any (loopback servers without keys need none). */
export function apiKey(): string {
  return localStorage.getItem(KEY) ?? "";
}

/** Saves (or clears, with "") the API key. */
export function setApiKey(k: string): void {
  if (k) localStorage.setItem(KEY, k);
  else localStorage.removeItem(KEY);
}

function headers(json: boolean): Record<string, string> {
  const h: Record<string, string> = {};
  if (json) h["content-type"] = "application/json";
  const k = apiKey();
  if (k) h["authorization"] = `Bearer ${k}`;
  return h;
}

async function failure(r: Response): Promise<ApiError> {
  let msg = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    if (body?.error?.message) msg = body.error.message;
  } catch {
    // Not JSON: the status line says enough.
  }
  return new ApiError(msg, r.status);
}

/** One JSON request; throws ApiError with the server's message on any non-2xx answer. */
export async function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  let r: Response;
  try {
    r = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(`cannot reach the server: ${e}`, 0);
  }
  if (!r.ok) throw await failure(r);
  if (r.status === 204) return undefined as T;
  return (await r.json()) as T;
}

/** Reads a `text/event-stream` body, calling `onData` with each event's data and name. */
async function readSse(
  r: Response,
  onData: (data: string, event: string) => void,
  signal?: AbortSignal,
): Promise<void> {
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    if (signal?.aborted) return;
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut: number;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onData(data.join("\n"), event);
    }
  }
}

/** What the last chunk of a streamed completion tells about the turn. */
export interface TurnInfo {
  turn_id?: number;
  policy_version?: number;
  turn_type?: string;
  finish_reason?: string;
}

/** Streams a chat completion: `onText` gets every piece; resolves with the turn's ids. */
export async function streamChat(
  sessionId: string,
  messages: { role: string; content: string }[],
  onText: (piece: string) => void,
  opts: { maxTokens?: number; signal?: AbortSignal } = {},
): Promise<TurnInfo> {
  const r = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { ...headers(true), "x-session-id": sessionId },
    body: JSON.stringify({
      model: "clawrl",
      messages,
      stream: true,
      max_tokens: opts.maxTokens ?? 256,
    }),
    signal: opts.signal,
  });
  if (!r.ok) throw await failure(r);
  const info: TurnInfo = {};
  await readSse(
    r,
    (data) => {
      if (data === "[DONE]") return;
      const c = JSON.parse(data);
      const choice = c.choices?.[0];
      if (choice?.delta?.content) onText(choice.delta.content);
      if (choice?.finish_reason) info.finish_reason = choice.finish_reason;
      if (c.turn_id !== undefined) info.turn_id = c.turn_id;
      if (c.policy_version !== undefined) info.policy_version = c.policy_version;
      if (c.turn_type !== undefined) info.turn_type = c.turn_type;
    },
    opts.signal,
  );
  return info;
}

/** A Studio event (`/studio/events`): `type` names it, the rest is its data. */
export type StudioEvent = { type: string; [k: string]: any };

type Listener = (e: StudioEvent) => void;
const listeners = new Set<Listener>();
const statusListeners = new Set<(connected: boolean) => void>();

/** Calls `f` with every Studio event from now on; returns the unsubscribe function. */
export function onEvent(f: Listener): () => void {
  listeners.add(f);
  return () => listeners.delete(f);
}

/** Calls `f` whenever the event stream connects or drops. */
export function onConnection(f: (connected: boolean) => void): void {
  statusListeners.add(f);
}

/** Keeps one event stream open for the whole page, reconnecting after a drop. A fetch stream
 * rather than EventSource, so the API key travels in a header rather than the URL. */
export async function connectEvents(): Promise<never> {
  for (;;) {
    try {
      const r = await fetch("/studio/events", { headers: headers(false) });
      if (!r.ok) throw await failure(r);
      statusListeners.forEach((f) => f(true));
      await readSse(r, (data) => {
        const e = JSON.parse(data) as StudioEvent;
        listeners.forEach((f) => f(e));
      });
    } catch (e) {
      console.warn("event stream:", e);
    }
    statusListeners.forEach((f) => f(false));
    await new Promise((ok) => setTimeout(ok, 1500));
  }
}
