// Settings: the model and judge being served, where clients connect, this browser's API key,
// and (for the owner) the keys and their roles.

import { api, apiKey, setApiKey } from "./api.js";
import { attempt, fill, h, toast } from "./dom.js";

let info: HTMLElement;
let keys: HTMLElement;

/** Builds the Settings view into `root`. */
export function mountSettings(root: HTMLElement): void {
  info = h("dl", { class: "info", "data-testid": "settings-info" });
  keys = h("div", { "data-testid": "keys" });
  const key = h("input", { type: "password", value: apiKey(), placeholder: "none (loopback without keys)", size: 40 });
  const save = h("button", { class: "primary" }, "Save key");
  save.addEventListener("click", () => {
    setApiKey(key.value.trim());
    toast("Key saved in this browser; reconnecting.");
    setTimeout(() => location.reload(), 500);
  });
  const name = h("input", { placeholder: "name, e.g. alice" });
  const role = h(
    "select",
    {},
    ["client", "annotator", "owner"].map((r) => h("option", { value: r }, r)),
  );
  const create = h("button", {}, "Create key");
  create.addEventListener("click", async () => {
    const r = await attempt(() => api("POST", "/studio/keys", { name: name.value.trim(), role: role.value }));
    if (r) {
      name.value = "";
      await loadKeys(false);
      keys.prepend(h("p", { class: "new-key" }, `Key for ${r.name} (${r.role}), shown once: `, h("code", {}, r.key)));
    }
  });
  fill(
    root,
    h("h3", {}, "Engine"),
    info,
    h(
      "p",
      { class: "muted" },
      "In the desktop app, File → Open model… serves another GGUF or Hugging Face model, and File → Export adapter… saves the serving adapter in PEFT's layout.",
    ),
    h("h3", {}, "This browser's API key"),
    h("p", {}, key, " ", save),
    h("h3", {}, "API keys and roles"),
    h(
      "p",
      { class: "muted" },
      "client: chat only · annotator: + feedback, hints, inspect, queue · owner: + training settings, versions, keys.",
    ),
    h("p", {}, name, " ", role, " ", create),
    keys,
  );
}

/** Called by the router when the view is shown. */
export async function showSettings(): Promise<void> {
  const health = await attempt(() => api("GET", "/healthz"));
  const models = await attempt(() => api("GET", "/v1/models"));
  const base = `${location.origin}/v1`;
  fill(
    info,
    h("dt", {}, "model"),
    h("dd", { "data-testid": "model-id" }, models?.data?.[0]?.id ?? health?.model ?? "?"),
    h("dt", {}, "context window"),
    h("dd", {}, `${models?.data?.[0]?.context_length ?? "?"} tokens`),
    h("dt", {}, "default sampling"),
    h(
      "dd",
      { "data-testid": "sampling-defaults" },
      samplingText(health?.sampling_defaults),
    ),
    h("dt", {}, "device"),
    h("dd", { "data-testid": "device" }, health?.device ?? "?"),
    h("dt", {}, "judge"),
    h("dd", {}, health?.judge ?? "?"),
    h("dt", {}, "serving"),
    h("dd", {}, `policy version v${health?.policy_version ?? "?"}`),
    h("dt", {}, "OpenAI base URL"),
    h("dd", {}, h("code", {}, base)),
    h("dt", {}, "API reference"),
    h("dd", {}, h("a", { href: "/openapi.json", target: "_blank" }, "/openapi.json")),
  );
  await loadKeys(true);
}

/** The sampling a request gets when it names none, and where it came from. */
function samplingText(d: { temperature: number; top_p: number; source: string } | undefined): string {
  if (!d) return "?";
  const from: Record<string, string> = {
    metadata: "from the model file",
    known_model: "from the model's card",
    open_ai: "OpenAI's defaults",
  };
  return `temperature ${d.temperature}, top-p ${d.top_p} (${from[d.source] ?? d.source}); a request's own values win`;
}

async function loadKeys(quiet: boolean): Promise<void> {
  let r: any;
  try {
    r = await api("GET", "/studio/keys");
  } catch (e) {
    const m = e instanceof Error ? e.message : String(e);
    fill(keys, h("p", { class: "muted" }, `Keys are the owner's: ${m}`));
    if (!quiet) toast(m, "error");
    return;
  }
  const rows = (r.keys as { id: number; name: string; role: string; created_at: number }[]).map((k) => {
    const del = h("button", {}, "Delete");
    del.addEventListener("click", async () => {
      if (!confirm(`Delete the key of ${k.name}?`)) return;
      try {
        await api("DELETE", `/studio/keys/${k.id}`);
      } catch (e) {
        toast(e instanceof Error ? e.message : String(e), "error");
      }
      await loadKeys(false);
    });
    // Poisoning: everything the key contributed stops training, and serving rolls back
    // before the first version trained on it.
    const reject = h("button", { "data-testid": `reject-key-${k.id}` }, "Reject contributions");
    reject.addEventListener("click", async () => {
      if (!confirm(`Reject everything ${k.name} contributed (hints, replies, the samples they made) and roll back the versions trained on it?`)) return;
      try {
        const r = await api("POST", `/studio/keys/${k.id}/reject`, {});
        const back = r.rolled_back_to === null ? "no version had trained on it" : `serving rolled back to v${r.rolled_back_to}`;
        toast(`${k.name}: ${r.samples_dropped} samples dropped, ${r.hints_rejected} hints rejected, ${r.samples_requeued} other samples queued again; ${back}.`, "info");
      } catch (e) {
        toast(e instanceof Error ? e.message : String(e), "error");
      }
    });
    return h("tr", {}, h("td", {}, k.name), h("td", {}, k.role), h("td", {}, new Date(k.created_at).toLocaleString()), h("td", {}, reject, " ", del));
  });
  fill(
    keys,
    rows.length
      ? h("table", {}, h("tr", {}, h("th", {}, "name"), h("th", {}, "role"), h("th", {}, "created"), h("th", {}, "")), rows)
      : h("p", { class: "muted" }, "No keys: the server is open to loopback only."),
  );
}
