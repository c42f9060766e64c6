// The Studio's shell in the page: tabs, the router, the status bar and the one event stream.

import { api, connectEvents, onConnection, onEvent } from "./api.js";
import { mountAnnotate, setAnnotateActive } from "./annotate.js";
import { mountChat } from "./chat.js";
import { fill, h, plural } from "./dom.js";
import { loadInspect, mountInspect } from "./inspect.js";
import { mountRollouts, showRollouts } from "./rollouts.js";
import { mountSettings, showSettings } from "./settings.js";
import { mountTrain, showTrain } from "./train.js";

const VIEWS = ["chat", "annotate", "inspect", "train", "rollouts", "settings"] as const;
type View = (typeof VIEWS)[number];
const TITLES: Record<View, string> = {
  chat: "Chat",
  annotate: "Annotate",
  inspect: "Inspect",
  train: "Train",
  rollouts: "Rollouts",
  settings: "Settings",
};

const panes = {} as Record<View, HTMLElement>;
const tabs = {} as Record<View, HTMLAnchorElement>;

function route(): void {
  const [name, arg] = location.hash.replace(/^#/, "").split("/");
  const view: View = (VIEWS as readonly string[]).includes(name) ? (name as View) : "chat";
  for (const v of VIEWS) {
    panes[v].hidden = v !== view;
    tabs[v].classList.toggle("active", v === view);
  }
  setAnnotateActive(view === "annotate");
  if (view === "inspect" && arg) void loadInspect(Number(arg));
  if (view === "train") void showTrain();
  if (view === "rollouts") void showRollouts(arg);
  if (view === "settings") void showSettings();
}

function statusBar(): HTMLElement {
  const conn = h("span", { class: "pill bad", "data-testid": "connection" }, "connecting…");
  const version = h("span", { class: "pill version", "data-testid": "live-version" }, "v?");
  const activity = h("span", { class: "activity muted" });
  onConnection((up) => {
    conn.textContent = up ? "live" : "reconnecting…";
    conn.className = `pill ${up ? "good" : "bad"}`;
    if (up) void api("GET", "/healthz").then((hz) => (version.textContent = `serving v${hz.policy_version}`)).catch(() => {});
  });
  onEvent((e) => {
    if (e.type === "published") version.textContent = `serving v${e.version}`;
    const say: Record<string, string> = {
      turn: `turn #${e.turn_id} answered by v${e.policy_version}`,
      judged: `turn #${e.turn_id} judged`,
      sample: `${plural(e.pending, "sample")} queued`,
      train_started: `training step ${e.step}…`,
      trained: `step ${e.step} done → v${e.version}`,
      published: `serving v${e.version}`,
    };
    if (say[e.type]) activity.textContent = say[e.type];
  });
  return h("div", { class: "statusbar" }, conn, version, activity);
}

function main(): void {
  const app = document.getElementById("app")!;
  const nav = h("nav", { class: "tabs" });
  const content = h("main", {});
  for (const v of VIEWS) {
    tabs[v] = h("a", { href: `#${v}`, "data-testid": `tab-${v}` }, TITLES[v]);
    nav.append(tabs[v]);
    panes[v] = h("section", { class: `view view-${v}`, "data-testid": `view-${v}` });
    content.append(panes[v]);
  }
  fill(app, h("header", {}, h("h1", {}, "ClawRL Studio"), nav, statusBar()), content);
  mountChat(panes.chat);
  mountAnnotate(panes.annotate);
  mountInspect(panes.inspect);
  mountTrain(panes.train);
  mountRollouts(panes.rollouts);
  mountSettings(panes.settings);
  window.addEventListener("hashchange", route);
  route();
  void connectEvents();
}

main();
