/** Helpers for TaskQueue tests: the queue over a fresh database, rows to enqueue against. */
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted } from "effect"
import { InstanceId, RelayConfig, type RelayConfigShape } from "../../src/config.js"
import { clientOptions } from "../../src/db/Database.js"
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
  Effect.gen(function* () {
    const registry = yield* Registry
    yield* registry.register("publisher-principal", {
      sessionId,
      providers: rows.map((row) => ({ type: "openai", model: `model-of-${row.name}`, maxConcurrent: 64, ...row }))
    })
    yield* registry.bindSession(sessionId)
  })

export const enqueue = (
  model: string,
  extra: { readonly priority?: number; readonly streaming?: boolean; readonly agentId?: string | null; readonly body?: unknown } = {}
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

export const countTasks = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ n: number }>`SELECT count(*)::int AS n FROM llm_relay.inference_tasks`.pipe(Effect.map((r) => r[0]!.n), Effect.orDie))

/** Inserts a public LLM row directly. */
export const insertPublic = (name: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`INSERT INTO llm_relay.llms (id, name, kind, model, url, pool, status, created_at, updated_at)
      VALUES (${`pub-${name}`}, ${name}, 'public', 'm', 'http://upstream/v1', ${name}, 'active', ${new Date(0)}, ${new Date(0)})`
      .pipe(Effect.orDie))

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
      PgClient.layer({
        url: Redacted.make(db.url),
        ...clientOptions,
        ...(options.maxConnections !== undefined ? { maxConnections: options.maxConnections } : {})
      })))),
    Layer.orDie
  )
  const config = Layer.merge(RelayConfig.layerWith(options.config ?? {}), Layer.succeed(InstanceId, "instance-test"))
  return TaskQueue.layer.pipe(
    Layer.provideMerge(Signals.layerLocal),
    Layer.provideMerge(Registry.layer.pipe(Layer.provideMerge(Layer.merge(database, config))))
  )
}
