/** Helpers for TaskQueue tests: the queue over a fresh database, rows to enqueue against. */
import { SqlClient } from "@effect/sql"
import { assert } from "@effect/vitest"
import { Chunk, type Duration, Effect, Either, Layer, Queue, Redacted, TestServices } from "effect"
import { InstanceId, RelayConfig, type RelayConfigShape } from "../../src/config.js"
import { layerUrl } from "../../src/db/Database.js"
import { migrate } from "../../src/db/Migrator.js"
import { Registry } from "../../src/registry/Registry.js"
import { Signals } from "../../src/signals/Signals.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { RegistryTest } from "./layers.js"
import * as TestDatabase from "./TestDatabase.js"

/** A fresh migrated database, the registry, local signals and the task queue. */
export const QueueTest = TaskQueue.layer.pipe(Layer.provideMerge(Signals.layerLocal), Layer.provideMerge(RegistryTest))

/** Registers a session serving `rows` and binds it (its rows active, ready to claim). */
export const serve = (
  sessionId: string,
  rows: ReadonlyArray<{ readonly name: string; readonly pool?: string; readonly maxConcurrent?: number }>
) =>
  Effect.gen(function*() {
    const registry = yield* Registry
    yield* registry.register("publisher-principal", {
      sessionId,
      providers: rows.map((row) => ({ type: "openai", model: `model-of-${row.name}`, maxConcurrent: 64, ...row }))
    })
    yield* registry.bindSession(sessionId)
  })

export const enqueue = (
  model: string,
  extra: {
    readonly priority?: number
    readonly streaming?: boolean
    readonly agentId?: string | null
    readonly body?: unknown
  } = {}
) =>
  Effect.flatMap(TaskQueue, (queue) =>
    queue.enqueue({
      model,
      path: "/v1/chat/completions",
      streaming: extra.streaming ?? false,
      requestBody: extra.body ?? { model, messages: [{ role: "user", content: "hi" }] },
      ownerId: "owner-1",
      ...(extra.priority !== undefined ? { priority: extra.priority } : {}),
      ...(extra.agentId !== undefined ? { agentId: extra.agentId } : {})
    }))

/** The row as stored, for assertions on columns the Task view does not show. */
export const row = (id: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{
      status: string
      attempts: number
      claimedBy: string | null
      errorType: string | null
      errorMessage: string | null
      chunkCount: number
    }>`SELECT status, attempts, claimed_by, error_type, error_message, chunk_count FROM llm_relay.inference_tasks WHERE id = ${id}`
      .pipe(Effect.map((rows) => rows[0]), Effect.orDie))

export const countTasks = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    sql<{ n: number }>`SELECT count(*)::int AS n FROM llm_relay.inference_tasks`.pipe(
      Effect.map((r) => r[0]!.n),
      Effect.orDie
    )
)

/** What a session's claim takes right now: its task frames. */
export const claim = (sessionId: string) => Effect.flatMap(TaskQueue, (q) => q.claimFor(sessionId))

/** A claim that must take exactly one task: its frame. */
export const claimOne = (sessionId: string) =>
  Effect.map(claim(sessionId), (frames) => {
    assert.strictEqual(frames.length, 1, `${sessionId} claims exactly one task`)
    return frames[0]!
  })

/** Everything a subscription has received and nobody took yet. */
export const drain = <A>(queue: Queue.Dequeue<A>) => Effect.map(Queue.takeAll(queue), Chunk.toReadonlyArray)

/**
 * Real time, with a deadline, for waiting on fibers that talk to PostgreSQL
 * (the tests' clock is a TestClock, which cannot move other connections on).
 */
export const live = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  label: string,
  timeout: Duration.DurationInput = "5 seconds"
) =>
  TestServices.provideLive(
    effect.pipe(Effect.timeoutFail({ duration: timeout, onTimeout: () => new Error(`timed out: ${label}`) }))
  ).pipe(Effect.orDie)

/** A post's or a waiter's outcome: the error's tag, or `ok` for a success. */
export const tagOf = <E extends { readonly _tag: string }>(outcome: Either.Either<unknown, E>, ok = "ok") =>
  Either.isLeft(outcome) ? outcome.left._tag : ok

/**
 * The queue over its own fresh database, with config overrides and a wider
 * connection pool (the default pool has 10 connections; a race of 12 claimers
 * on separate connections needs more).
 */
export const queueLayer = (options: {
  readonly maxConnections?: number
  readonly config?: Partial<RelayConfigShape>
}) => {
  const database = Layer.effectDiscard(migrate()).pipe(
    Layer.provideMerge(Layer.unwrapScoped(Effect.map(TestDatabase.createDatabase, (db) =>
      layerUrl(
        Redacted.make(db.url),
        options.maxConnections !== undefined ? { maxConnections: options.maxConnections } : undefined
      )))),
    Layer.orDie
  )
  const config = Layer.merge(RelayConfig.layerWith(options.config ?? {}), Layer.succeed(InstanceId, "instance-test"))
  return TaskQueue.layer.pipe(
    Layer.provideMerge(Signals.layerLocal),
    Layer.provideMerge(Registry.layer.pipe(Layer.provideMerge(Layer.merge(database, config))))
  )
}
