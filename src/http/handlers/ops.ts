import { HttpApiBuilder } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { RelayApi } from "../Api.js"
import { NotReady } from "../groups/ops.js"

export const OpsLive = HttpApiBuilder.group(RelayApi, "ops", (handlers) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    return handlers
      .handle("healthz", () => Effect.succeed({ status: "ok" as const }))
      .handle("readyz", () =>
        sql`SELECT 1`.pipe(
          Effect.timeout("2 seconds"),
          Effect.as({ status: "ready" as const }),
          Effect.catchAll(() => Effect.fail(new NotReady({ message: "the database does not answer" })))
        ))
      .handle("metrics", () =>
        Effect.gen(function* () {
          const tasks = yield* sql<{ status: string; n: number }>`
            SELECT status::text AS status, count(*)::int AS n FROM llm_relay.inference_tasks GROUP BY status`
          const llms = yield* sql<{ kind: string; status: string; n: number }>`
            SELECT kind, status, count(*)::int AS n FROM llm_relay.llms GROUP BY kind, status`
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
  }))
