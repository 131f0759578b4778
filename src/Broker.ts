/**
 * The broker as one Layer: every service over a `SqlClient` (+ config). The
 * `serve` command is one host of it; another Effect app can be another
 * (see src/index.ts and README "Embedding").
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer } from "effect"
import { InstanceId, RelayConfig } from "./config.js"
import { migrate } from "./db/Migrator.js"
import { Limits } from "./limits/Limits.js"
import { Registry } from "./registry/Registry.js"
import { Sessions } from "./sessions/Sessions.js"
import { Signals } from "./signals/Signals.js"
import { Sweeper } from "./sweeper/Sweeper.js"
import { Relay } from "./tasks/Relay.js"
import { TaskQueue } from "./tasks/TaskQueue.js"
import { Tokens } from "./tokens/Tokens.js"

/** Apply the migrations, then revert tasks held by sessions of dead broker processes. */
export const startup = Effect.gen(function*() {
  const applied = yield* migrate()
  if (applied.length > 0) {
    yield* Effect.logInfo(`migrations applied: ${applied.map((m) => `${m.id}_${m.name}`).join(", ")}`)
  }
  const queue = yield* TaskQueue
  yield* queue.startupRecovery
})

/** Registry, Tokens, Signals, TaskQueue, Relay, Sessions and Limits (no background fibers). */
export const services = Layer.mergeAll(Sessions.layer, Relay.layer, Limits.layer).pipe(
  Layer.provideMerge(TaskQueue.layer),
  Layer.provideMerge(Signals.layerLocal),
  Layer.provideMerge(Layer.merge(Registry.layer, Tokens.layer))
)

/**
 * The whole broker over a SqlClient: migrates and recovers at build, then runs
 * the sweeper in the layer's scope.
 */
export const layer: Layer.Layer<
  Registry | Tokens | Signals | TaskQueue | Relay | Sessions | Limits | Sweeper,
  never,
  SqlClient.SqlClient | RelayConfig | InstanceId
> = Sweeper.layer.pipe(
  // The sweeper starts only after migrations and recovery have run.
  Layer.provideMerge(Layer.effectDiscard(Effect.orDie(startup)).pipe(Layer.provideMerge(services)))
)
