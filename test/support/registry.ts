/** Helpers for tests that register publisher rows or public LLMs. */
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/** One provider of a registration, with overrides (the registry's defaults otherwise). */
export const provider = (
  name: string,
  extra: { readonly model?: string; readonly pool?: string; readonly maxConcurrent?: number } = {}
) => ({ name, type: "openai", model: "Qwen/Qwen2.5-7B-Instruct-AWQ", ...extra })

/** Inserts a public LLM row directly (the admin route belongs to the HTTP API). */
export const insertPublic = (name: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => {
    const epoch = new Date(0)
    return sql`INSERT INTO llm_relay.llms (id, name, kind, model, url, pool, status, created_at, updated_at)
      VALUES (${`pub-${name}`}, ${name}, 'public', 'm', 'http://upstream/v1', ${name}, 'active', ${epoch}, ${epoch})`
      .pipe(Effect.orDie)
  })
