// The package's major version is the contract's: chat.v1 is 1.x.y.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { CONTRACT_PACKAGE, CONTRACT_VERSION, ChatService, SessionService } from "../dist/index.js";

test("the package's major version is the contract's", () => {
  const { version } = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(Number(version.split(".")[0]), CONTRACT_VERSION);
  assert.equal(CONTRACT_PACKAGE, `chat.v${CONTRACT_VERSION}`);
  for (const service of [ChatService, SessionService]) {
    assert.ok(service.typeName.startsWith(`${CONTRACT_PACKAGE}.`), service.typeName);
  }
});
