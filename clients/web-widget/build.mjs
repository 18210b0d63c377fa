// The widget's build: src/widget.ts compiled by tsc into one classic script, dist/widget.js
// (no modules, no framework: one script tag embeds it). Its size is printed, raw and gzipped.
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
rmSync(join(here, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [join(here, "node_modules", "typescript", "bin", "tsc"), "-p", join(here, "tsconfig.json")], {
  stdio: "inherit",
});
const body = readFileSync(join(here, "dist", "widget.js"));
console.log(`web widget: dist/widget.js ${body.length} bytes, ${gzipSync(body, { level: 9 }).length} gzipped`);
