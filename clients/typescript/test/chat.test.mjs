// ChatService through @chat-service/client (connect-node's gRPC transport, HTTP/2 without
// TLS) against a real chat-server.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ChannelType,
  ChatService,
  Code,
  MessageDirection,
  SendMessageRequestSchema,
  create,
  createClient,
  withRequestId,
} from "../dist/index.js";
import { newUser, nextMessages, server, transport } from "./support.mjs";

function sendRequest(userId, text, extra = {}) {
  return create(SendMessageRequestSchema, {
    userId,
    channel: ChannelType.WEB,
    content: { kind: { case: "text", value: { text } } },
    ...extra,
  });
}

test("SendMessage with a token answers the stored message and the reply", async () => {
  const chat = createClient(ChatService, transport());
  const call = withRequestId(`node-test-${Date.now()}`);
  const sent = await chat.sendMessage(sendRequest(newUser(), "hello"), call);

  assert.equal(sent.message?.direction, MessageDirection.INBOUND);
  assert.equal(sent.message?.content?.kind.case, "text");
  assert.equal(sent.message?.content?.kind.value.text, "hello");
  assert.equal(sent.message?.sequence, 1n);
  assert.equal(sent.replies.length, 1);
  assert.equal(sent.replies[0].direction, MessageDirection.OUTBOUND);
  assert.equal(sent.replies[0].sequence, 2n);
  assert.ok(sent.replies[0].content?.kind.value.text, "the reply has text");
  assert.equal(sent.conversation?.lastSequence, 2n);
  // The request id goes out and comes back in the response headers.
  assert.equal(call.echoedRequestId(), call.requestId);
});

test("a token function is asked for the token on every call", async () => {
  let asked = 0;
  const chat = createClient(
    ChatService,
    transport(async () => {
      asked += 1;
      return server.token;
    }),
  );
  const user = newUser();
  await chat.sendMessage(sendRequest(user, "hello"));
  await chat.sendMessage(sendRequest(user, "help"));
  assert.equal(asked, 2);
});

test("ListMessages pages through a conversation without gap or repeat", async () => {
  const chat = createClient(ChatService, transport());
  const user = newUser();
  const first = await chat.sendMessage(sendRequest(user, "hello"));
  const conversationId = first.conversation.id;
  for (const text of ["help", "thanks"]) {
    await chat.sendMessage(sendRequest(user, text, { conversationId }));
  }

  const sequences = [];
  let pageToken = "";
  let pages = 0;
  do {
    const page = await chat.listMessages({ conversationId, pageSize: 2, pageToken });
    assert.ok(page.messages.length <= 2);
    sequences.push(...page.messages.map((m) => m.sequence));
    pageToken = page.nextPageToken;
    pages += 1;
  } while (pageToken !== "" && pages < 10);

  // Three messages and their three replies, oldest first, over three pages.
  assert.deepEqual(sequences, [1n, 2n, 3n, 4n, 5n, 6n]);
  assert.equal(pages, 3);
});

test("StreamConversationEvents replays, follows live, and resumes after a sequence", async () => {
  const chat = createClient(ChatService, transport());
  const user = newUser();
  const first = await chat.sendMessage(sendRequest(user, "hello"));
  const conversationId = first.conversation.id;

  const opened = new AbortController();
  const stream = chat
    .streamConversationEvents({ conversationId, afterSequence: 0n }, { signal: opened.signal })
    [Symbol.asyncIterator]();
  const replayed = await nextMessages(stream, 2);
  assert.deepEqual(
    replayed.map((m) => m.sequence),
    [1n, 2n],
  );

  // A message sent meanwhile arrives live, with its reply.
  await chat.sendMessage(sendRequest(user, "help", { conversationId }));
  const live = await nextMessages(stream, 2);
  assert.deepEqual(
    live.map((m) => [m.sequence, m.direction]),
    [
      [3n, MessageDirection.INBOUND],
      [4n, MessageDirection.OUTBOUND],
    ],
  );
  assert.equal(live[0].content?.kind.value.text, "help");
  opened.abort();
  await assert.rejects(stream.next(), (error) => error.code === Code.Canceled);

  // Two more while nobody listens; resuming after the last sequence seen gives exactly them.
  await chat.sendMessage(sendRequest(user, "thanks", { conversationId }));
  const resumed = new AbortController();
  const again = chat
    .streamConversationEvents({ conversationId, afterSequence: 4n }, { signal: resumed.signal })
    [Symbol.asyncIterator]();
  const missed = await nextMessages(again, 2);
  assert.deepEqual(
    missed.map((m) => m.sequence),
    [5n, 6n],
  );
  // ...then live again, with nothing repeated.
  await chat.sendMessage(sendRequest(user, "bye", { conversationId }));
  const after = await nextMessages(again, 2);
  assert.deepEqual(
    after.map((m) => m.sequence),
    [7n, 8n],
  );
  resumed.abort();
});
