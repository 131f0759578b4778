/**
 * Reading an answer's body, the broker's or an upstream's: JSON or not, and
 * the message of an error body in the shapes the publisher meets (the
 * protocol's and OpenAI's `{"error":{"message":…}}`, some servers'
 * `{"error":"…"}`).
 */
import { Either, Schema } from "effect"

/** The body as JSON, or undefined when it is not JSON (an empty 204 body included). */
export const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

const ErrorBody = Schema.Struct({
  error: Schema.Union(Schema.String, Schema.Struct({ message: Schema.Unknown }))
})
// exact: an `error` object without a `message` key is no error body
const decodeErrorBody = Schema.decodeUnknownEither(ErrorBody, { exact: true })

/** The error message an answer's body carries, or `fallback`. */
export const errorMessageOf = (body: unknown, fallback: string): string => {
  const decoded = decodeErrorBody(body)
  if (Either.isLeft(decoded)) return fallback
  const error = decoded.right.error
  return typeof error === "string" ? error : String(error.message)
}
