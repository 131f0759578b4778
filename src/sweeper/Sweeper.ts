/**
 * The scheduled sweep (ARCHITECTURE.md "Sweeper"): one fiber that, every
 * `sweepInterval`, runs the registry sweep (heartbeat-stale rows inactive and
 * their sessions closed; long-inactive rows deleted) and the task sweep
 * (unacknowledged claims revert and their sessions are closed as lost,
 * pending and running timeouts, retention).
 * Every pass is idempotent and reads time only from `Clock`.
 */
import { Context, Effect, Layer, Schedule } from "effect"
import { RelayConfig } from "../config.js"
import { Registry, type SweepResult } from "../registry/Registry.js"
import { Sessions } from "../sessions/Sessions.js"
import { TaskQueue, type TaskSweepResult } from "../tasks/TaskQueue.js"

export interface SweeperShape {
  /** One pass: the registry half (stale sessions closed), then the task half (unresponsive sessions closed). */
  readonly sweepOnce: Effect.Effect<{ readonly llms: SweepResult; readonly tasks: TaskSweepResult }>
}

export const make = Effect.gen(function*() {
  const registry = yield* Registry
  const sessions = yield* Sessions
  const queue = yield* TaskQueue

  const sweepOnce = Effect.gen(function*() {
    const llms = yield* registry.gcSweep
    yield* Effect.forEach(llms.staleSessions, (id) => sessions.close(id, "lost"), { discard: true })
    yield* sessions.forget(llms.deletedSessions)
    const tasks = yield* queue.sweep
    // A session that left a claim unacknowledged is lost: a half-open
    // connection must not keep receiving prompts it never answers.
    yield* Effect.forEach(tasks.unresponsive, (id) => sessions.close(id, "lost"), { discard: true })
    return { llms, tasks }
  }).pipe(Effect.withSpan("Sweeper.sweepOnce"))

  return { sweepOnce } satisfies SweeperShape
})

export class Sweeper extends Context.Tag("llm-relay/Sweeper")<Sweeper, SweeperShape>() {
  /** The service alone: `sweepOnce` on demand, no background fiber. */
  static readonly layerManual = Layer.effect(this, make)

  /** The service plus its fiber, repeating every `sweepInterval` for the layer's lifetime. */
  static readonly layer = Layer.scopedContext(
    Effect.gen(function*() {
      const sweeper = yield* make
      const config = yield* RelayConfig
      const pass = sweeper.sweepOnce.pipe(
        Effect.tap(({ llms, tasks }) =>
          llms.markedInactive + llms.deleted + llms.deletedSessions.length + tasks.reverted + tasks.expired +
                tasks.timedOut + tasks.deleted + tasks.erased > 0
            ? Effect.logInfo("sweep", { llms, tasks })
            : Effect.void
        ),
        Effect.catchAllCause((cause) => Effect.logError("sweep failed; next pass as scheduled", cause))
      )
      yield* Effect.forkScoped(Effect.repeat(pass, Schedule.spaced(config.sweepInterval)))
      return Context.make(Sweeper, sweeper)
    })
  )
}
