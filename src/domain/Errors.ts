/**
 * Errors every part of the broker can raise. Each is a `Schema.TaggedError`
 * whose tag is the protocol's error `type` and whose status annotation is the
 * HTTP status it maps to (PROTOCOL.md "Common rules"). Concept-specific errors
 * live beside their concept (`Llm.ts`, `Task.ts`, …).
 */
import { HttpApiSchema } from "@effect/platform"
import { ParseResult, Schema } from "effect"

export class BadRequest extends Schema.TaggedError<BadRequest>()(
  "BadRequest",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

export class Unauthorized extends Schema.TaggedError<Unauthorized>()(
  "Unauthorized",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 401 })
) {}

export class Forbidden extends Schema.TaggedError<Forbidden>()(
  "Forbidden",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 403 })
) {}

export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()(
  "PayloadTooLarge",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 413 })
) {}

/** A per-principal limit is reached: nothing was stored; try again after `retryAfter` seconds. */
export class RateLimited extends Schema.TaggedError<RateLimited>()(
  "RateLimited",
  { message: Schema.String, retryAfter: Schema.Int },
  HttpApiSchema.annotations({ status: 429 })
) {}

export class NotFound extends Schema.TaggedError<NotFound>()(
  "NotFound",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/**
 * Schema issues as one sentence that names the field, e.g.
 * `providers[0].name: Expected a string matching …`.
 */
export const describeIssues = (issues: ReadonlyArray<ParseResult.ArrayFormatterIssue>): string =>
  issues
    .slice(0, 3)
    .map((issue) => {
      const path = issue.path
        .map((key, i) => (typeof key === "number" ? `[${key}]` : i === 0 ? String(key) : `.${String(key)}`))
        .join("")
      // a message quotes the offending value: at most 200 characters of it, never a whole body
      const message = issue.message.length > 300 ? `${issue.message.slice(0, 300)}…` : issue.message
      return path.length > 0 ? `${path.slice(0, 200)}: ${message}` : message
    })
    .join("; ")

/** A schema failure as one sentence that names the field. */
export const describeParseError = (error: ParseResult.ParseError): string =>
  describeIssues(ParseResult.ArrayFormatter.formatErrorSync(error))

export const badRequestFromParseError = (error: ParseResult.ParseError): BadRequest =>
  new BadRequest({ message: describeParseError(error) })
