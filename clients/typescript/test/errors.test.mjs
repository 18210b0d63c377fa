// Failed calls decoded into the server's error shape (google.rpc.Status in the
// grpc-status-details-bin trailer): field violations, a token's reason, RetryInfo.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ChannelType,
  ChatService,
  Code,
  chatErrorOf,
  createClient,
  withRequestId,
} from "../dist/index.js";
import { newUser, server, transport } from "./support.mjs";

/** The error a call fails with (the test fails if it succeeds). */
async function failure(call) {
  try {
    await call();
  } catch (error) {
    return error;
  }
  assert.fail("the call succeeded");
}

test("an invalid request is INVALID_ARGUMENT with its field violations", async () => {
  const chat = createClient(ChatService, transport());
  const call = withRequestId();
  // No user, no channel, no content.
  const error = await failure(() => chat.sendMessage({}, call));
  const decoded = chatErrorOf(error);

  assert.equal(decoded.code, Code.InvalidArgument);
  assert.equal(decoded.codeName, "INVALID_ARGUMENT");
  assert.equal(decoded.domain, "chat-service");
  assert.ok(decoded.reason, "ErrorInfo has a reason");
  const fields = decoded.fieldViolations.map((v) => v.field);
  assert.ok(fields.includes("user_id"), `violations: ${fields}`);
  assert.ok(fields.includes("channel"), `violations: ${fields}`);
  assert.ok(decoded.fieldViolations.every((v) => v.description.length > 0));
  // The request id the caller sent is quoted in the error.
  assert.equal(decoded.requestId, call.requestId);
});

test("an expired token is UNAUTHENTICATED with reason TOKEN_EXPIRED", async () => {
  const chat = createClient(ChatService, transport(server.expiredToken));
  const error = await failure(() =>
    chat.sendMessage({
      userId: newUser(),
      channel: ChannelType.WEB,
      content: { kind: { case: "text", value: { text: "hello" } } },
    }),
  );
  const decoded = chatErrorOf(error);

  assert.equal(decoded.code, Code.Unauthenticated);
  assert.equal(decoded.reason, "TOKEN_EXPIRED");
  assert.equal(decoded.fieldViolations.length, 0);
  assert.equal(decoded.retryDelayMs, undefined);
  assert.ok(decoded.requestId, "the server's request id is quoted");
});

test("a tenant over its quota gets RESOURCE_EXHAUSTED with RetryInfo", async () => {
  // The tenant's quota: a burst of 1, then one call every 20 s.
  const chat = createClient(ChatService, transport(server.limitedToken));
  let error;
  for (let attempt = 0; attempt < 3 && error === undefined; attempt += 1) {
    try {
      await chat.listConversations({ pageSize: 1 });
    } catch (caught) {
      error = caught;
    }
  }
  assert.ok(error, "the quota was never reached");
  const decoded = chatErrorOf(error);

  assert.equal(decoded.code, Code.ResourceExhausted);
  assert.equal(decoded.reason, "RATE_LIMITED");
  assert.ok(decoded.retryDelayMs > 0 && decoded.retryDelayMs <= 20_000, `${decoded.retryDelayMs}`);
  assert.ok(decoded.quotaViolations.length > 0);
  assert.match(decoded.quotaViolations[0].subject, /tenant/);
});

test("an error that is not a call's still decodes to a shape", () => {
  const decoded = chatErrorOf(new Error("boom"));
  assert.equal(decoded.code, Code.Unknown);
  assert.equal(decoded.reason, "");
  assert.deepEqual(decoded.fieldViolations, []);
});
