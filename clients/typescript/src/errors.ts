/**
 * The server's error shape, decoded from a failed call.
 *
 * chat-service ends a failed call with a `google.rpc.Status` in the `grpc-status-details-bin`
 * trailer (server/interceptors/error_boundary.py): always an ErrorInfo (reason, domain
 * "chat-service", metadata with the call's request_id), and where they apply BadRequest field
 * violations, QuotaFailure violations and RetryInfo (RESOURCE_EXHAUSTED, UNAVAILABLE).
 */
import { fromBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";

/** The metadata key of the binary google.rpc.Status a gRPC server sends with an error. */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";
/** The metadata key of the request id: sent by the caller or made by the server, echoed back. */
export const REQUEST_ID_KEY = "x-request-id";

export interface FieldViolation {
  /** The request field, as a path (e.g. `content.text.text`). */
  field: string;
  description: string;
}

export interface QuotaViolation {
  subject: string;
  description: string;
}

/** A failed call, as chat-service describes it. */
export interface ChatError {
  /** The gRPC status code (connect's `Code` numbers are gRPC's). */
  code: Code;
  /** The code's name as gRPC spells it, e.g. `INVALID_ARGUMENT`. */
  codeName: string;
  /** The status message, meant for a person. */
  message: string;
  /** ErrorInfo.reason (UPPER_SNAKE, stable: branch on this, not on the message). */
  reason: string;
  /** ErrorInfo.domain ("chat-service" for the server's own errors). */
  domain: string;
  /** ErrorInfo.metadata, e.g. `{ request_id: "...", claim: "sub" }`. */
  metadata: Record<string, string>;
  /** BadRequest field violations (INVALID_ARGUMENT). */
  fieldViolations: FieldViolation[];
  /** QuotaFailure violations (RESOURCE_EXHAUSTED). */
  quotaViolations: QuotaViolation[];
  /** RetryInfo.retry_delay in milliseconds, when the server says when to retry. */
  retryDelayMs: number | undefined;
  /** The call's request id: ErrorInfo's `request_id`, else the `x-request-id` header. */
  requestId: string | undefined;
}

/** One packed detail: an Any's type URL (or bare type name) and its bytes. */
export interface PackedDetail {
  type: string;
  value: Uint8Array;
}

/** Anything with `get(key)` over call metadata: fetch `Headers` or grpc-js' `Metadata`. */
interface MetadataLike {
  get(key: string): unknown;
}

/**
 * The error shape of a failed call: a `ConnectError` (or anything `ConnectError.from` takes)
 * from @connectrpc/connect, or a grpc-js `ServiceError` (an Error with numeric `code` and
 * `metadata`).
 */
export function chatErrorOf(error: unknown): ChatError {
  if (isGrpcJsServiceError(error)) {
    const bin = firstValue(error.metadata.get(STATUS_DETAILS_KEY));
    if (bin instanceof Uint8Array) {
      return decodeStatusDetails(bin, error.metadata);
    }
    return fromParts(error.code, error.details ?? error.message, [], error.metadata);
  }
  const connectError = ConnectError.from(error);
  const details: PackedDetail[] = connectError.details.flatMap((detail) =>
    "desc" in detail ? [] : [{ type: detail.type, value: detail.value }],
  );
  return fromParts(connectError.code, connectError.rawMessage, details, connectError.metadata);
}

/**
 * Decode the bytes of a `grpc-status-details-bin` trailer (a binary google.rpc.Status).
 * `metadata`, when given, supplies the `x-request-id` if ErrorInfo lacks it.
 */
export function decodeStatusDetails(bytes: Uint8Array, metadata?: MetadataLike): ChatError {
  const status = fromBinary(StatusSchema, bytes);
  return fromParts(
    status.code as Code,
    status.message,
    status.details.map((any) => ({ type: any.typeUrl, value: any.value })),
    metadata,
  );
}

function fromParts(
  code: Code,
  message: string,
  details: PackedDetail[],
  metadata: MetadataLike | undefined,
): ChatError {
  const info = unpackFirst(details, ErrorInfoSchema);
  const badRequest = unpackFirst(details, BadRequestSchema);
  const quota = unpackFirst(details, QuotaFailureSchema);
  const retry = unpackFirst(details, RetryInfoSchema);
  const delay = retry?.retryDelay;
  const infoMetadata = { ...(info?.metadata ?? {}) };
  const header = metadata ? firstValue(metadata.get(REQUEST_ID_KEY)) : undefined;
  return {
    code,
    codeName: codeName(code),
    message,
    reason: info?.reason ?? "",
    domain: info?.domain ?? "",
    metadata: infoMetadata,
    fieldViolations: (badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    })),
    quotaViolations: (quota?.violations ?? []).map((v) => ({
      subject: v.subject,
      description: v.description,
    })),
    retryDelayMs: delay ? Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6) : undefined,
    requestId: infoMetadata["request_id"] || (typeof header === "string" ? header : undefined),
  };
}

function unpackFirst<Desc extends DescMessage>(
  details: PackedDetail[],
  schema: Desc,
): MessageShape<Desc> | undefined {
  for (const detail of details) {
    // An Any's type URL is "type.googleapis.com/<full name>"; connect strips the prefix.
    const name = detail.type.substring(detail.type.lastIndexOf("/") + 1);
    if (name === schema.typeName) {
      return fromBinary(schema, detail.value);
    }
  }
  return undefined;
}

/** gRPC's name for a status code: Code.InvalidArgument is "INVALID_ARGUMENT". */
export function codeName(code: Code): string {
  if ((code as number) === 0) {
    return "OK";
  }
  const name = Code[code];
  return name === undefined ? String(code) : name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

interface GrpcJsServiceError {
  code: number;
  details?: string;
  message: string;
  metadata: MetadataLike & { getMap(): unknown };
}

function isGrpcJsServiceError(error: unknown): error is GrpcJsServiceError {
  if (!(error instanceof Error) || error instanceof ConnectError) {
    return false;
  }
  const candidate = error as Partial<GrpcJsServiceError>;
  return (
    typeof candidate.code === "number" &&
    typeof candidate.metadata === "object" &&
    candidate.metadata !== null &&
    typeof candidate.metadata.getMap === "function"
  );
}

function firstValue(value: unknown): unknown {
  // grpc-js' Metadata.get answers a list; fetch Headers.get a string or null.
  return Array.isArray(value) ? value[0] : (value ?? undefined);
}
