/**
 * Every non-2xx answer in the OpenAI error shape of PROTOCOL.md:
 * `{"error":{"type":"<Tag>","code":"<snake_case>","message":"…"}}`.
 *
 * A domain error's status is the one its class declares
 * (`HttpApiSchema.annotations({ status })`), read from the class: it is
 * written nowhere else. One HttpApi middleware turns each failure into such a
 * response: the domain's tagged errors, HttpApi's own decode failures (400
 * naming the field), unreadable or malformed bodies (400), bodies over the
 * limit (413) and unknown routes (404), the last ones as the domain errors
 * they are. Anything else is logged and answered 500 in the same shape;
 * interruption (the client left) passes through.
 */
import { HttpApiError, HttpApiSchema, HttpServerError, HttpServerResponse } from "@effect/platform"
import { Cause, Effect, Option, ParseResult, Predicate, Schema, SchemaAST } from "effect"
import {
  BadRequest,
  badRequestFromParseError,
  describeIssues,
  NotFound,
  PayloadTooLarge,
  RateLimited
} from "../domain/Errors.js"
import { UpstreamError } from "../domain/Task.js"

export const snakeCase = (tag: string): string =>
  tag.replace(/([a-z0-9])([A-Z])/g, "$1_$2").replace(/([A-Z])([A-Z][a-z])/g, "$1_$2").toLowerCase()

export interface WireError {
  readonly error: { readonly type: string; readonly code: string; readonly message: string }
}

export const wireError = (type: string, message: string): WireError => ({
  error: { type, code: snakeCase(type), message }
})

/**
 * An error class as the HttpApi declares it (and the OpenAPI document shows
 * it): the class's own status, and on the wire the OpenAI shape rather than
 * the class's `{_tag, message}`. Encode only: the broker never reads errors
 * back. `status` is for a class whose status is the instance's (UpstreamError).
 */
export const asWire = <Self extends { readonly _tag: string; readonly message: string }, I, R>(
  errorClass: Schema.Schema<Self, I, R> & { readonly _tag: string },
  status: number = HttpApiSchema.getStatusErrorAST(errorClass.ast)
): Schema.Schema<Self, WireError> => {
  const type: string = errorClass._tag
  const shape = Schema.Struct({
    error: Schema.Struct({ type: Schema.Literal(type), code: Schema.Literal(snakeCase(type)), message: Schema.String })
  })
  return Schema.transformOrFail(shape, Schema.typeSchema(errorClass), {
    strict: true,
    decode: (wire, _, ast) => ParseResult.fail(new ParseResult.Forbidden(ast, wire, "errors are encoded only")),
    encode: (error) => ParseResult.succeed(wireError(error._tag, error.message))
  }).annotations({ identifier: type, ...HttpApiSchema.annotations({ status }) })
}

/**
 * Answers the `openai` SDK must not retry on its own (it retries 5xx twice by
 * default): the relay has already waited (504), redispatched what it safely
 * could (502), or found no publisher (503; `X-Relay-Max-Wait` is the way to
 * wait for one). A retry would be a new task, and a 504 would triple the wait.
 */
const final = new Set(["PublisherDisconnected", "PublisherOffline", "Timeout"])

export const errorResponse = (
  status: number,
  type: string,
  message: string,
  headers: Record<string, string> = {}
) =>
  HttpServerResponse.unsafeJson(wireError(type, message), {
    status,
    headers: final.has(type) ? { ...headers, "x-should-retry": "false" } : headers
  })

/** A tagged error with a message, as every domain error is. */
interface DomainError {
  readonly _tag: string
  readonly message: string
}

const isDomainError = (u: unknown): u is DomainError =>
  Predicate.hasProperty(u, "_tag") && typeof u._tag === "string" &&
  Predicate.hasProperty(u, "message") && typeof u.message === "string"

/** The status the error's class declares; None when it declares none. */
const declaredStatus = (error: DomainError): Option.Option<number> => {
  const errorClass = error.constructor
  return Schema.isSchema(errorClass)
    ? SchemaAST.getAnnotation<number>(HttpApiSchema.AnnotationStatus)(SchemaAST.typeAST(errorClass.ast))
    : Option.none()
}

/** The response of a domain error: its class's status (500 if it declares none). */
export const domainErrorResponse = (error: DomainError) =>
  errorResponse(Option.getOrElse(declaredStatus(error), () => 500), error._tag, error.message)

const tooLarge = /max|too large|exceed/i

const isTooLarge = (error: HttpServerError.RequestError): boolean =>
  tooLarge.test(String(error.description ?? "")) ||
  (Predicate.hasProperty(error.cause, "message") && tooLarge.test(String(error.cause.message)))

/** HttpApi's and the HTTP server's own failures as the domain errors they are on the wire. */
const asDomainError = (error: unknown): unknown => {
  if (error instanceof HttpApiError.HttpApiDecodeError) {
    return new BadRequest({ message: describeIssues(error.issues) || error.message })
  }
  if (ParseResult.isParseError(error)) return badRequestFromParseError(error)
  if (HttpServerError.isServerError(error)) {
    switch (error._tag) {
      case "RouteNotFound":
        // the path alone: a query string may hold a secret, which has no place in an answer
        return new NotFound({
          message: `no route ${error.request.method} ${error.request.url.split("?")[0]!.slice(0, 200)}`
        })
      case "RequestError":
        return isTooLarge(error)
          ? new PayloadTooLarge({ message: "the request body is over the size limit" })
          : new BadRequest({ message: "the request body is not valid JSON" })
    }
  }
  return error
}

/** The wire form of a failure; None for one the protocol does not name (a bug). */
export const toWire = (
  failure: unknown
): Option.Option<{ status: number; type: string; message: string; headers?: Record<string, string> }> => {
  const error = asDomainError(failure)
  if (error instanceof RateLimited) {
    return Option.some({
      status: 429,
      type: "RateLimited",
      message: error.message,
      headers: { "retry-after": String(error.retryAfter) }
    })
  }
  if (error instanceof UpstreamError) {
    const status = error.status >= 400 && error.status <= 599 ? error.status : 502
    return Option.some({ status, type: "UpstreamError", message: error.message })
  }
  if (!isDomainError(error)) return Option.none()
  return Option.map(declaredStatus(error), (status) => ({ status, type: error._tag, message: error.message }))
}

/** The HttpApi middleware: every failure leaves as an OpenAI-shaped error response. */
export const errorMiddleware = <E, R>(app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.catchAllCause(app, (cause) => {
    if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause)
    // Failures and defects alike: a body that cannot be read is a defect in HttpApi.
    const wire = toWire(Cause.squash(cause))
    if (Option.isSome(wire)) {
      return Effect.succeed(errorResponse(wire.value.status, wire.value.type, wire.value.message, wire.value.headers))
    }
    return Effect.logError("unhandled failure", cause).pipe(
      Effect.as(errorResponse(500, "InternalError", "the broker failed to handle this request"))
    )
  })
