// Copies the static files beside the compiled modules: dist/ is then the whole UI.
import { cpSync } from "node:fs";
cpSync(new URL("./static/", import.meta.url), new URL("./dist/", import.meta.url), { recursive: true });
