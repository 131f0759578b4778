/** Request headers the relay reads beyond auth, decoded once with a clear 400 when malformed. */
import type { HttpServerRequest } from "@effect/platform"
import { Duration, Effect, Option } from "effect"
import { BadRequest } from "../domain/Errors.js"

/** A number of seconds from 0 to 86400 from a header, or None; anything else is a BadRequest naming it. */
export const seconds = (request: HttpServerRequest.HttpServerRequest, name: string) => {
  const raw = request.headers[name.toLowerCase()]
  if (raw === undefined || raw.trim() === "") return Effect.succeed(Option.none<Duration.Duration>())
  const value = Number(raw)
  return Number.isFinite(value) && value >= 0 && value <= 86_400
    ? Effect.succeed(Option.some(Duration.millis(Math.round(value * 1000))))
    : Effect.fail(new BadRequest({ message: `${name} must be a number of seconds from 0 to 86400, got '${raw}'` }))
}

/** Printable ASCII, as HTTP clients and SDKs send keys (UUIDs, `stainless-node-retry-…`). */
const KEY = /^[\x21-\x7e]{1,255}$/

/** The `Idempotency-Key` header: absent, or 1-255 printable ASCII characters (BadRequest naming it otherwise). */
export const idempotencyKey = (request: HttpServerRequest.HttpServerRequest) => {
  const raw = request.headers["idempotency-key"]
  if (raw === undefined) return Effect.succeed(undefined)
  return KEY.test(raw)
    ? Effect.succeed(raw)
    : Effect.fail(new BadRequest({ message: "Idempotency-Key must be 1-255 printable ASCII characters" }))
}
