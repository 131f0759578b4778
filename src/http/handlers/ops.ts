import { HttpApiBuilder } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { Effect, Layer } from "effect"
import { MetricsRepo } from "../../metrics/Repo.js"
import { RelayApi } from "../Api.js"
import { NotReady } from "../groups/ops.js"

export const OpsLive = HttpApiBuilder.group(RelayApi, "ops", (handlers) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const metrics = yield* MetricsRepo
    return handlers
      .handle("healthz", () => Effect.succeed({ status: "ok" as const }))
      .handle("readyz", () =>
        sql`SELECT 1`.pipe(
          Effect.timeout("2 seconds"),
          Effect.as({ status: "ready" as const }),
          Effect.catchAll(() => Effect.fail(new NotReady({ message: "the database does not answer" })))
        ))
      .handle("metrics", () =>
        Effect.gen(function*() {
          const tasks = yield* metrics.tasksByStatus
          const llms = yield* metrics.llmsByKindAndStatus
          const lines = [
            "# HELP llm_relay_tasks Inference tasks by status.",
            "# TYPE llm_relay_tasks gauge",
            ...tasks.map((r) => `llm_relay_tasks{status="${r.status}"} ${r.n}`),
            "# HELP llm_relay_llms Registered LLM rows by kind and status.",
            "# TYPE llm_relay_llms gauge",
            ...llms.map((r) => `llm_relay_llms{kind="${r.kind}",status="${r.status}"} ${r.n}`)
          ]
          return lines.join("\n") + "\n"
        }).pipe(Effect.orDie))
  })).pipe(Layer.provide(MetricsRepo.layer))
