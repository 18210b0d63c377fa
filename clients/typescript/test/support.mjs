// What the tests share: the server the test run started (tests/clients/test_clients.py puts
// its address and tokens in the environment) and small helpers.
import { createChatTransport } from "../dist/index.js";

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: these tests run against a server the test run starts; ` +
        "run them with `make test-clients` (or .venv/bin/python -m pytest tests/clients)",
    );
  }
  return value;
}

export const server = {
  target: required("CHAT_TEST_TARGET"),
  token: required("CHAT_TEST_TOKEN"),
  expiredToken: required("CHAT_TEST_EXPIRED_TOKEN"),
  limitedToken: required("CHAT_TEST_LIMITED_TOKEN"),
};

export function transport(token = server.token, options = {}) {
  return createChatTransport({ target: server.target, token, ...options });
}

/** A user id no other test (or earlier run) has used. */
export function newUser() {
  return `node-${Math.random().toString(36).slice(2, 10)}`;
}

/** The next `count` message events of a stream, failing after `ms`. */
export async function nextMessages(iterator, count, ms = 10_000) {
  const messages = [];
  const deadline = Date.now() + ms;
  while (messages.length < count) {
    const left = deadline - Date.now();
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`only ${messages.length} of ${count} messages within ${ms} ms`)),
        Math.max(left, 0),
      );
    });
    try {
      const next = await Promise.race([iterator.next(), timeout]);
      if (next.done) {
        throw new Error(`the stream ended after ${messages.length} of ${count} messages`);
      }
      if (next.value.event.case === "message") {
        messages.push(next.value.event.value);
      }
    } finally {
      clearTimeout(timer);
    }
  }
  return messages;
}
