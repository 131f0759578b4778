import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { loadMigrations, migrate } from "../../src/db/Migrator.js"
import * as TestDatabase from "../support/TestDatabase.js"

const schemaSnapshot = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const columns = yield* sql<{ tableName: string; columnName: string; dataType: string }>`
    SELECT table_name, column_name, data_type FROM information_schema.columns
    WHERE table_schema = 'public' ORDER BY table_name, ordinal_position`
  const indexes = yield* sql<{ indexname: string }>`
    SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname`
  return { columns, indexes: indexes.map((i) => i.indexname) }
})

describe("Migrator", () => {
  it.effect("applies every migration on a fresh database, and a second run is a no-op with the same schema", () =>
    Effect.gen(function* () {
      const first = yield* migrate()
      assert.deepStrictEqual(first.map((m) => m.id), loadMigrations().map((m) => m.id))
      const before = yield* schemaSnapshot
      const second = yield* migrate()
      assert.deepStrictEqual(second, [])
      assert.deepStrictEqual(yield* schemaSnapshot, before)
      const tables = new Set(before.columns.map((c) => c.tableName))
      for (const table of ["llms", "publisher_sessions", "inference_tasks", "api_tokens", "llm_relay_migrations"]) {
        assert.isTrue(tables.has(table), `table ${table}`)
      }
      assert.include(before.indexes, "inference_tasks_dispatch_idx")
    }).pipe(Effect.provide(TestDatabase.layerEmpty)))

  it.effect("concurrent migrators apply each file once", () =>
    Effect.gen(function* () {
      const results = yield* Effect.all([migrate(), migrate(), migrate()], { concurrency: "unbounded" })
      const applied = results.flat().map((m) => m.id).sort()
      assert.deepStrictEqual(applied, loadMigrations().map((m) => m.id).sort())
    }).pipe(Effect.provide(TestDatabase.layerEmpty)))
})
