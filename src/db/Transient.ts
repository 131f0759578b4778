/**
 * PostgreSQL undoes a transaction it picked as a deadlock victim (40P01) or
 * could not serialize (40001); nothing of it was stored, so running it again
 * is correct and is what the caller wants. Statements here reach the services
 * as defects (`orDie`), so both a failure and a defect are looked at.
 */
import { SqlError } from "@effect/sql"
import { Cause, Effect } from "effect"

const TRANSIENT = new Set(["40P01", "40001"])

/** How many times a transaction is run again before its failure stands. */
const ATTEMPTS = 5

const codeOf = (u: unknown): unknown => {
  if (u instanceof SqlError.SqlError) return codeOf(u.cause)
  return typeof u === "object" && u !== null && "code" in u ? (u as { code: unknown }).code : undefined
}

/** Whether a failure is one PostgreSQL asks the client to retry. */
export const isTransient = (u: unknown): boolean => {
  const code = codeOf(u)
  return typeof code === "string" && TRANSIENT.has(code)
}

const transientCause = <E>(cause: Cause.Cause<E>): boolean =>
  [...Cause.failures(cause), ...Cause.defects(cause)].some(isTransient)

/**
 * Runs `self` (a whole transaction, or one statement outside any) again when
 * PostgreSQL undid it as a deadlock victim or serialization failure. No
 * sleep: the other transaction has what it waited for once this one is
 * rolled back, and domain code takes no time outside `Clock`.
 */
export const retryTransient = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  const attempt = (n: number): Effect.Effect<A, E, R> =>
    Effect.catchAllCause(self, (cause) =>
      n < ATTEMPTS && transientCause(cause) && !Cause.isInterrupted(cause)
        ? Effect.zipRight(
          Effect.logDebug(`database: transaction undone by PostgreSQL (deadlock or serialization), run again`),
          Effect.zipRight(Effect.yieldNow(), attempt(n + 1))
        )
        : Effect.failCause(cause))
  return attempt(1)
}
