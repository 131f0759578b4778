/**
 * Every non-2xx answer in the OpenAI error shape of PROTOCOL.md:
 * `{"error":{"type":"<Tag>","code":"<snake_case>","message":"…"}}`.
 *
 * One HttpApi middleware turns each failure into such a response: the domain's
 * tagged errors (status from their class), HttpApi's own decode failures
 * (400 naming the field), unreadable or malformed bodies (400), bodies over
 * the limit (413), and unknown routes (404). Anything else is logged and
 * answered 500 in the same shape; interruption (the client left) passes through.
 */
import { HttpApiError, HttpServerError, HttpServerResponse } from "@effect/platform"
import { SqlError } from "@effect/sql/SqlError"
import { Cause, Effect, Option, ParseResult, Predicate } from "effect"
import * as Errors from "../domain/Errors.js"
import * as TaskErrors from "../domain/Task.js"

export const snakeCase = (tag: string): string =>
  tag.replace(/([a-z0-9])([A-Z])/g, "$1_$2").replace(/([A-Z])([A-Z][a-z])/g, "$1_$2").toLowerCase()

export interface WireError {
  readonly error: { readonly type: string; readonly code: string; readonly message: string }
}

export const wireError = (type: string, message: string): WireError => ({
  error: { type, code: snakeCase(type), message }
})

/**
 * Answers the `openai` SDK must not retry on its own (it retries 5xx twice by
 * default): the relay has already waited (504), redispatched what it safely
 * could (502), or found no publisher (503; `X-Relay-Max-Wait` is the way to
 * wait for one). A retry would be a new task, and a 504 would triple the wait.
 */
const final = new Set(["PublisherDisconnected", "PublisherOffline", "Timeout"])

export const errorResponse = (status: number, type: string, message: string) =>
  HttpServerResponse.unsafeJson(wireError(type, message), {
    status,
    ...(final.has(type) ? { headers: { "x-should-retry": "false" } } : {})
  })

/** The status of each domain error tag (the class's annotation, in one table). */
const statusByTag: Record<string, number> = {
  BadRequest: 400,
  NotVirtual: 400,
  Unauthorized: 401,
  Forbidden: 403,
  NotFound: 404,
  ModelNotFound: 404,
  TaskNotFound: 404,
  SessionNotFound: 404,
  LlmNotFound: 404,
  NameConflict: 409,
  TaskNotHeld: 409,
  TaskCancelled: 410,
  PayloadTooLarge: 413,
  NotImplemented: 501,
  PublisherDisconnected: 502,
  PublisherOffline: 503,
  Timeout: 504
}


const hasTagAndMessage = (u: unknown): u is { readonly _tag: string; readonly message: string } =>
  Predicate.hasProperty(u, "_tag") && typeof u._tag === "string" &&
  Predicate.hasProperty(u, "message") && typeof u.message === "string"

const isTooLarge = (error: HttpServerError.RequestError): boolean =>
  /max|too large|exceed/i.test(String(error.description ?? "")) ||
  /max|too large|exceed/i.test(String((error.cause as { message?: unknown } | undefined)?.message ?? ""))

/**
 * PostgreSQL refusing U+0000: `unsupported Unicode escape sequence` (22P05,
 * jsonb) or `invalid byte sequence` (22021, text).
 */
const isUnstorableText = (cause: unknown) =>
  Predicate.hasProperty(cause, "code") && (cause.code === "22P05" || cause.code === "22021")

/** The wire form of a domain/platform failure; None for unknown errors. */
export const toWire = (error: unknown): Option.Option<{ status: number; type: string; message: string }> => {
  if (error instanceof TaskErrors.UpstreamError) {
    const status = error.status >= 400 && error.status <= 599 ? error.status : 502
    return Option.some({ status, type: "UpstreamError", message: error.message })
  }
  if (error instanceof HttpApiError.HttpApiDecodeError) {
    const first = error.issues.slice(0, 3).map((issue) => {
      const path = issue.path.map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? String(k) : `.${String(k)}`)).join("")
      return path ? `${path}: ${issue.message}` : issue.message
    })
    return Option.some({ status: 400, type: "BadRequest", message: first.join("; ") || error.message })
  }
  if (error instanceof SqlError && isUnstorableText(error.cause)) {
    // Valid JSON, but PostgreSQL text and jsonb cannot hold U+0000: the
    // statement failed as a whole, so nothing was stored.
    return Option.some({
      status: 400,
      type: "BadRequest",
      message: "the body contains a NUL character (\\u0000), which cannot be stored"
    })
  }
  if (ParseResult.isParseError(error)) {
    return Option.some({ status: 400, type: "BadRequest", message: Errors.describeParseError(error) })
  }
  if (HttpServerError.isServerError(error)) {
    switch (error._tag) {
      case "RouteNotFound":
        return Option.some({
          status: 404,
          type: "NotFound",
          message: `no route ${error.request.method} ${error.request.url}`
        })
      case "RequestError":
        return Option.some(
          isTooLarge(error)
            ? { status: 413, type: "PayloadTooLarge", message: "the request body is over the size limit" }
            : { status: 400, type: "BadRequest", message: "the request body is not valid JSON" }
        )
      default:
        return Option.none()
    }
  }
  if (hasTagAndMessage(error) && error._tag in statusByTag) {
    return Option.some({ status: statusByTag[error._tag]!, type: error._tag, message: error.message })
  }
  return Option.none()
}

/** The HttpApi middleware: every failure leaves as an OpenAI-shaped error response. */
export const errorMiddleware = <E, R>(app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.catchAllCause(app, (cause) => {
    if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause)
    // Failures and defects alike: a body that cannot be read is a defect in HttpApi.
    const error = Cause.squash(cause)
    const wire = toWire(error)
    if (Option.isSome(wire)) {
      return Effect.succeed(errorResponse(wire.value.status, wire.value.type, wire.value.message))
    }
    return Effect.logError("unhandled failure", cause).pipe(
      Effect.as(errorResponse(500, "InternalError", "the broker failed to handle this request"))
    )
  })
