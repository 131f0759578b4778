/**
 * SQL of the `/metrics` gauges: counts over `llm_relay.inference_tasks` and
 * `llm_relay.llms`, read when a scraper asks (nothing is kept in memory).
 */
import { SqlClient, SqlSchema } from "@effect/sql"
import { Context, Effect, Layer, Schema } from "effect"
import { LlmKind, LlmStatus } from "../domain/Llm.js"
import { TaskStatus } from "../domain/Task.js"

export const TaskCount = Schema.Struct({ status: TaskStatus, n: Schema.Int })
export type TaskCount = typeof TaskCount.Type

export const LlmCount = Schema.Struct({ kind: LlmKind, status: LlmStatus, n: Schema.Int })
export type LlmCount = typeof LlmCount.Type

export interface MetricsRepoShape {
  /** Tasks per status (statuses with no task are absent). */
  readonly tasksByStatus: Effect.Effect<ReadonlyArray<TaskCount>>
  /** LLM rows per kind and status (pairs with no row are absent). */
  readonly llmsByKindAndStatus: Effect.Effect<ReadonlyArray<LlmCount>>
}

export const make: Effect.Effect<MetricsRepoShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const countTasks = SqlSchema.findAll({
    Request: Schema.Void,
    Result: TaskCount,
    execute: () => sql`SELECT status::text AS status, count(*)::int AS n FROM llm_relay.inference_tasks GROUP BY status`
  })
  const countLlms = SqlSchema.findAll({
    Request: Schema.Void,
    Result: LlmCount,
    execute: () => sql`SELECT kind, status, count(*)::int AS n FROM llm_relay.llms GROUP BY kind, status`
  })

  return {
    tasksByStatus: Effect.orDie(countTasks(undefined)),
    llmsByKindAndStatus: Effect.orDie(countLlms(undefined))
  } as const
})

export class MetricsRepo extends Context.Tag("llm-relay/MetricsRepo")<MetricsRepo, MetricsRepoShape>() {
  /** Needs a `SqlClient`. */
  static readonly layer = Layer.effect(this, make)
}
