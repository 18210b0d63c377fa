// The package's build: the generated code from the repository's gen/es is copied into gen/
// (a package can ship only what is inside it), then src/ is compiled to dist/ (JavaScript and
// .d.ts). `make clients` and `npm pack` (prepack) run it.
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const generated = join(here, "..", "..", "gen", "es");

if (!existsSync(generated)) {
  throw new Error(`${generated} is missing: run 'make proto' in the repository`);
}
rmSync(join(here, "gen"), { recursive: true, force: true });
rmSync(join(here, "dist"), { recursive: true, force: true });
cpSync(generated, join(here, "gen"), { recursive: true });
execFileSync(process.execPath, [join(here, "node_modules", "typescript", "bin", "tsc"), "-p", join(here, "tsconfig.json")], {
  stdio: "inherit",
});
