// The same generated types through the other Node gRPC stack, @grpc/grpc-js: a call, and a
// failed call's details decoded by the same helper.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import * as grpc from "@grpc/grpc-js";
import { ChatService, Code, chatErrorOf, create, fromBinary, toBinary } from "../dist/index.js";
import { newUser, server } from "./support.mjs";

/** A grpc-js client for a protobuf-es service descriptor (unary methods). */
function grpcJsClient(service, target) {
  const definition = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: method.methodKind === "server_streaming",
      requestSerialize: (message) => Buffer.from(toBinary(method.input, message)),
      requestDeserialize: (bytes) => fromBinary(method.input, bytes),
      responseSerialize: (message) => Buffer.from(toBinary(method.output, message)),
      responseDeserialize: (bytes) => fromBinary(method.output, bytes),
    };
  }
  const Client = grpc.makeGenericClientConstructor(definition, service.typeName);
  return new Client(target, grpc.credentials.createInsecure());
}

function unary(client, method, request, token) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

const client = grpcJsClient(ChatService, server.target);
after(() => client.close());

test("grpc-js: SendMessage with the generated types", async () => {
  const request = create(ChatService.method.sendMessage.input, {
    userId: newUser(),
    channel: 1,
    content: { kind: { case: "text", value: { text: "hello" } } },
  });
  const sent = await unary(client, "sendMessage", request, server.token);
  assert.equal(sent.message.sequence, 1n);
  assert.equal(sent.replies.length, 1);
  assert.equal(sent.conversation.id.length > 0, true);
});

test("grpc-js: a failed call decodes into field violations", async () => {
  const error = await unary(client, "sendMessage", create(ChatService.method.sendMessage.input), server.token).then(
    () => assert.fail("the call succeeded"),
    (caught) => caught,
  );
  assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
  const decoded = chatErrorOf(error);
  assert.equal(decoded.code, Code.InvalidArgument);
  assert.ok(decoded.fieldViolations.some((v) => v.field === "user_id"));
  assert.ok(decoded.requestId, "the server's request id is quoted");
});
