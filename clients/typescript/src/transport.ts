/**
 * A gRPC transport for Node (HTTP/2, plaintext or TLS) with what every chat-service call needs:
 * the bearer token and the request id.
 */
import { randomUUID } from "node:crypto";
import type { CallOptions, Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport, type Http2SessionManager } from "@connectrpc/connect-node";
import { REQUEST_ID_KEY } from "./errors.js";

/** A token, or a function answering the current one (called before every call, so it may
 * refresh and cache as it likes). */
export type TokenSource = string | (() => string | Promise<string>);

export interface ChatTransportOptions {
  /** The server as `host:port` (`make run` prints it), or a base URL (`http://host:port`
   * for plaintext HTTP/2, `https://host:port` for TLS). */
  target: string;
  /** Sent as `authorization: Bearer <token>` with every call. */
  token?: TokenSource;
  /** Makes the `x-request-id` of a call that has none (default: a random UUID). */
  newRequestId?: () => string;
  /** More interceptors, run after the request id and token ones. */
  interceptors?: Interceptor[];
  /** Passed to connect-node (TLS options, keepalive: see `createGrpcTransport`). */
  nodeOptions?: Parameters<typeof createGrpcTransport>[0]["nodeOptions"];
  /** A shared HTTP/2 session (connect-node's `Http2SessionManager`), e.g. to close it. */
  sessionManager?: Http2SessionManager;
}

/** A connect-node gRPC transport to chat-service: real gRPC over HTTP/2. */
export function createChatTransport(options: ChatTransportOptions): Transport {
  const interceptors: Interceptor[] = [requestIdInterceptor(options.newRequestId)];
  if (options.token !== undefined) {
    interceptors.push(bearerTokenInterceptor(options.token));
  }
  return createGrpcTransport({
    baseUrl: baseUrlOf(options.target),
    interceptors: [...interceptors, ...(options.interceptors ?? [])],
    ...(options.nodeOptions ? { nodeOptions: options.nodeOptions } : {}),
    ...(options.sessionManager ? { sessionManager: options.sessionManager } : {}),
  });
}

/** `host:port` becomes `http://host:port`; a URL stays as it is. */
export function baseUrlOf(target: string): string {
  return /^https?:\/\//.test(target) ? target : `http://${target}`;
}

/** Attaches `authorization: Bearer <token>`; a function is asked for the token per call. */
export function bearerTokenInterceptor(token: TokenSource): Interceptor {
  return (next) => async (req) => {
    const value = typeof token === "string" ? token : await token();
    req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
}

/** Gives a call without an `x-request-id` one, so every call can be quoted in the logs. */
export function requestIdInterceptor(newRequestId: () => string = randomUUID): Interceptor {
  return (next) => (req) => {
    if (!req.header.has(REQUEST_ID_KEY)) {
      req.header.set(REQUEST_ID_KEY, newRequestId());
    }
    return next(req);
  };
}

/** Call options carrying a request id, and what the server answered in its headers. */
export interface RequestIdCall extends CallOptions {
  /** The id sent. */
  readonly requestId: string;
  /** The id the server echoed in the response headers (once they have arrived). */
  echoedRequestId(): string | undefined;
}

/**
 * Call options that send `requestId` as `x-request-id` and keep the echoed one:
 * `const call = withRequestId(); await chat.sendMessage(req, call); call.echoedRequestId()`.
 */
export function withRequestId(
  requestId: string = randomUUID(),
  options: CallOptions = {},
): RequestIdCall {
  let echoed: string | undefined;
  const headers = new Headers(options.headers);
  headers.set(REQUEST_ID_KEY, requestId);
  return {
    ...options,
    headers,
    requestId,
    onHeader(header: Headers) {
      echoed = header.get(REQUEST_ID_KEY) ?? undefined;
      options.onHeader?.(header);
    },
    echoedRequestId: () => echoed,
  };
}
