/**
 * Queue cycle without HTTP: enqueue → claim → complete through the TaskQueue
 * service, and the same workload through graphile-worker on the same
 * PostgreSQL server, concurrency matched.
 */
import { Effect, Layer, Redacted } from "effect"
import { makeWorkerUtils, run as runGraphile } from "graphile-worker"
import * as Broker from "../src/Broker.js"
import { InstanceId, RelayConfig } from "../src/config.js"
import * as Database from "../src/db/Database.js"
import { migrate } from "../src/db/Migrator.js"
import { Registry } from "../src/registry/Registry.js"
import { Signals } from "../src/signals/Signals.js"
import { TaskQueue } from "../src/tasks/TaskQueue.js"
import { summarize, type Summary } from "./harness.js"

export interface CycleResult {
  readonly tasks: number
  readonly perSecond: number
  readonly latencyMs: Summary
}

/**
 * N tasks enqueued by 16 producers while `sessions` publisher sessions, each
 * with a row of `capacity` (its maxConcurrent), claim (`claimFor`: up to the
 * free capacity in one statement) and complete them; `sessions × capacity`
 * tasks are in flight at most, like a graphile-worker with that concurrency.
 */
export const relayCycle = (databaseUrl: string, tasks: number, claimers: number, capacity = 1): Promise<CycleResult> =>
  Effect.gen(function*() {
    yield* migrate()
    const queue = yield* TaskQueue
    const registry = yield* Registry
    const signals = yield* Signals
    const pool = `cycle-${claimers}x${capacity}-${Date.now()}`
    const sessions = Array.from({ length: claimers }, (_, i) => `${pool}-claimer-${i}`)
    for (const [i, s] of sessions.entries()) {
      yield* registry.register("bench", {
        sessionId: s,
        providers: [{ name: `${pool}-row-${i}`, model: "m", pool, maxConcurrent: capacity }]
      })
      yield* registry.bindSession(s)
    }
    const enqueuedAt = new Map<string, number>()
    const latencies: Array<number> = []
    let done = 0
    const started = performance.now()
    const producer = Effect.forEach(
      Array.from({ length: tasks }, (_, i) => i),
      (i) =>
        Effect.gen(function*() {
          const t0 = performance.now()
          const task = yield* queue.enqueue({
            model: pool,
            path: "/v1/chat/completions",
            streaming: false,
            requestBody: { i },
            ownerId: "bench"
          })
          enqueuedAt.set(task.id, t0)
        }),
      { concurrency: 16, discard: true }
    )
    const claimer = (s: string) =>
      Effect.scoped(
        Effect.gen(function*() {
          const wake = yield* signals.subscribePool(pool)
          while (done < tasks) {
            const frames = yield* queue.claimFor(s)
            if (frames.length === 0) {
              yield* wake.take.pipe(Effect.timeout("20 millis"), Effect.ignore)
              continue
            }
            yield* Effect.forEach(
              frames,
              (f) =>
                Effect.gen(function*() {
                  yield* queue.complete(s, f.taskId, { status: 200, body: { ok: true } }, f.attempt)
                  done++
                  const t0 = enqueuedAt.get(f.taskId)
                  if (t0 !== undefined) latencies.push(performance.now() - t0)
                }),
              { concurrency: "unbounded", discard: true }
            )
          }
        })
      )
    yield* Effect.all([producer, ...sessions.map(claimer)], { concurrency: "unbounded", discard: true })
    const seconds = (performance.now() - started) / 1000
    return { tasks, perSecond: tasks / seconds, latencyMs: summarize(latencies) }
  }).pipe(
    Effect.provide(
      Broker.services.pipe(
        Layer.provideMerge(Database.layerUrl(Redacted.make(databaseUrl), { maxConnections: 20 })),
        Layer.provide(Layer.merge(RelayConfig.layerDefaults, Layer.succeed(InstanceId, "bench")))
      )
    ),
    Effect.runPromise
  )

/** The same: N jobs added by 16 producers, a worker with `concurrency` running them. */
export const graphileCycle = async (databaseUrl: string, tasks: number, concurrency: number): Promise<CycleResult> => {
  const utils = await makeWorkerUtils({ connectionString: databaseUrl })
  await utils.migrate()
  const addedAt = new Map<number, number>()
  const latencies: Array<number> = []
  let done = 0
  let finish: () => void = () => {}
  const finished = new Promise<void>((resolve) => (finish = resolve))
  const runner = await runGraphile({
    connectionString: databaseUrl,
    concurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: new (await import("graphile-worker")).Logger(() => () => {}),
    taskList: { cycle: async () => {} }
  })
  runner.events.on("job:complete", ({ job }) => {
    const t0 = addedAt.get((job.payload as { i: number }).i)
    if (t0 !== undefined) latencies.push(performance.now() - t0)
    if (++done === tasks) finish()
  })
  const started = performance.now()
  let next = 0
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < tasks) {
        const i = next++
        addedAt.set(i, performance.now())
        await utils.addJob("cycle", { i })
      }
    })
  )
  await finished
  const seconds = (performance.now() - started) / 1000
  await runner.stop()
  await utils.release()
  return { tasks, perSecond: tasks / seconds, latencyMs: summarize(latencies) }
}
