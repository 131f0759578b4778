/**
 * Per-principal limits on what a principal holds open on this broker
 * instance (PROTOCOL.md "Limits per principal"): publisher task streams, and
 * `/events` streams, `/wait`s and calls waiting for their answer. A place is
 * held for the life of the caller's Scope (the request, until its response
 * has been sent). Past the limit: 429 `RateLimited` with `Retry-After`,
 * nothing started. Counted in memory: each instance enforces its own share
 * (several instances behind a balancer admit up to N times the limit).
 *
 * The stored limits (LLM rows, pending tasks) are checked by the statements
 * that store them (Registry.register, TaskQueue's insert).
 */
import { Context, Effect, Layer, type Scope } from "effect"
import { RelayConfig } from "../config.js"
import { RateLimited } from "../domain/Errors.js"

export type HeldKind = "taskStreams" | "waiting"

export interface LimitsShape {
  /** One of the principal's places of `kind`, until the Scope closes; RateLimited when all are taken. */
  readonly hold: (kind: HeldKind, principalId: string) => Effect.Effect<void, RateLimited, Scope.Scope>
  /** How many places of `kind` the principal holds now (tests, metrics). */
  readonly held: (kind: HeldKind, principalId: string) => Effect.Effect<number>
}

const describe: Record<HeldKind, string> = {
  taskStreams: "open publisher task streams (RELAY_LIMIT_TASK_STREAMS)",
  waiting: "open /events streams, waits and calls waiting for an answer (RELAY_LIMIT_WAITING)"
}

export const make = Effect.gen(function*() {
  const config = yield* RelayConfig
  const limits: Record<HeldKind, number> = { taskStreams: config.limitTaskStreams, waiting: config.limitWaiting }
  const counts: Record<HeldKind, Map<string, number>> = { taskStreams: new Map(), waiting: new Map() }

  const release = (kind: HeldKind, principalId: string) =>
    Effect.sync(() => {
      const n = (counts[kind].get(principalId) ?? 1) - 1
      if (n <= 0) counts[kind].delete(principalId)
      else counts[kind].set(principalId, n)
    })

  const hold = (kind: HeldKind, principalId: string) =>
    Effect.acquireRelease(
      Effect.suspend(() => {
        const n = counts[kind].get(principalId) ?? 0
        if (n >= limits[kind]) {
          return Effect.fail(
            new RateLimited({ message: `limit reached: ${limits[kind]} ${describe[kind]}`, retryAfter: 1 })
          )
        }
        counts[kind].set(principalId, n + 1)
        return Effect.void
      }),
      () => release(kind, principalId)
    )

  const held = (kind: HeldKind, principalId: string) => Effect.sync(() => counts[kind].get(principalId) ?? 0)

  return { hold, held } satisfies LimitsShape
})

export class Limits extends Context.Tag("llm-relay/Limits")<Limits, LimitsShape>() {
  /** Needs `RelayConfig`. */
  static readonly layer = Layer.effect(this, make)
}
