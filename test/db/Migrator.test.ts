import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { loadMigrations, migrate } from "../../src/db/Migrator.js"
import * as TestDatabase from "../support/TestDatabase.js"

const snapshotOf = (schema: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const columns = yield* sql<{ tableName: string; columnName: string; dataType: string }>`
      SELECT table_name, column_name, data_type FROM information_schema.columns
      WHERE table_schema = ${schema} ORDER BY table_name, ordinal_position`
    const indexes = yield* sql<{ indexname: string }>`
      SELECT indexname FROM pg_indexes WHERE schemaname = ${schema} ORDER BY indexname`
    const types = yield* sql<{ typname: string }>`
      SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE n.nspname = ${schema} AND t.typtype = 'e' ORDER BY t.typname`
    return { columns, indexes: indexes.map((i) => i.indexname), types: types.map((t) => t.typname) }
  })
const schemaSnapshot = snapshotOf("llm_relay")

/** What the broker before 0002 did: its migrations table and 0001, unqualified (in `public`). */
const migrateLikeTheOldBroker = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const init = loadMigrations().find((m) => m.id === 1)!
  yield* sql`CREATE TABLE llm_relay_migrations (
    id integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
  )`
  yield* sql.withTransaction(
    Effect.zipRight(
      sql.unsafe(init.sql),
      sql`INSERT INTO llm_relay_migrations (id, name) VALUES (${init.id}, ${init.name})`
    )
  )
})

describe("Migrator", () => {
  it.effect("applies every migration on a fresh database, and a second run is a no-op with the same schema", () =>
    Effect.gen(function*() {
      const first = yield* migrate()
      assert.deepStrictEqual(first.map((m) => m.id), loadMigrations().map((m) => m.id))
      const before = yield* schemaSnapshot
      const second = yield* migrate()
      assert.deepStrictEqual(second, [])
      assert.deepStrictEqual(yield* schemaSnapshot, before)
      const tables = new Set(before.columns.map((c) => c.tableName))
      for (const table of ["llms", "publisher_sessions", "inference_tasks", "api_tokens", "migrations"]) {
        assert.isTrue(tables.has(table), `table llm_relay.${table}`)
      }
      assert.include(before.indexes, "inference_tasks_dispatch_idx")
      assert.deepStrictEqual(before.types, ["inference_task_status"])
      const inPublic = yield* snapshotOf("public")
      assert.deepStrictEqual(inPublic, { columns: [], indexes: [], types: [] }, "nothing of the broker's in public")
    }).pipe(Effect.provide(TestDatabase.layerEmpty)))

  it.effect("moves a database the previous broker migrated into llm_relay, rows and all, and ends with the fresh schema", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* migrateLikeTheOldBroker
      const at = new Date(1_000)
      yield* sql`INSERT INTO llms (id, name, kind, model, pool, status, created_at, updated_at)
        VALUES ('llm-1', 'old-llm', 'virtual', 'm', 'old-llm', 'active', ${at}, ${at})`
      yield* sql`INSERT INTO api_tokens (id, name, role, token_hash, created_at)
        VALUES ('tok-1', 'old-token', 'admin', 'hash-1', ${at})`
      yield* sql`INSERT INTO inference_tasks (id, pool, model, path, request_body, owner_id, created_at, updated_at)
        VALUES ('task-1', 'old-llm', 'm', '/v1/chat/completions', '{}', 'tok-1', ${at}, ${at})`
      yield* sql`INSERT INTO inference_task_chunks (task_id, seq, chunks) VALUES ('task-1', 1, ARRAY['a'])`

      const applied = yield* migrate()
      assert.deepStrictEqual(applied.map((m) => m.id), loadMigrations().map((m) => m.id).filter((id) => id > 1))
      assert.deepStrictEqual(yield* migrate(), [])

      const moved = yield* sql<{ llm: string; token: string; task: string; status: string; chunks: number }>`
        SELECT (SELECT name FROM llm_relay.llms) AS llm, (SELECT name FROM llm_relay.api_tokens) AS token,
               (SELECT id FROM llm_relay.inference_tasks) AS task,
               (SELECT status::text FROM llm_relay.inference_tasks) AS status,
               (SELECT count(*)::int FROM llm_relay.inference_task_chunks) AS chunks`
      assert.deepStrictEqual(moved[0], {
        llm: "old-llm",
        token: "old-token",
        task: "task-1",
        status: "pending",
        chunks: 1
      })
      // the identity sequence and the enum moved with the table
      const next = yield* sql<{ seq: string; status: string }>`
        INSERT INTO llm_relay.inference_tasks (id, pool, model, path, request_body, owner_id, created_at, updated_at, status)
        VALUES ('task-2', 'old-llm', 'm', '/v1/chat/completions', '{}', 'tok-1', ${at}, ${at},
                'claimed'::llm_relay.inference_task_status)
        RETURNING seq, status`
      assert.deepStrictEqual(next[0], { seq: "2", status: "claimed" })

      const recorded = yield* sql<{ id: number }>`SELECT id FROM llm_relay.migrations ORDER BY id`
      assert.deepStrictEqual(recorded.map((r) => r.id), loadMigrations().map((m) => m.id))
      const inPublic = yield* snapshotOf("public")
      assert.deepStrictEqual(
        [...new Set(inPublic.columns.map((c) => c.tableName))],
        ["llm_relay_migrations"],
        "only the old migrations table stays behind in public"
      )
      assert.deepStrictEqual(inPublic.types, [])

      const upgraded = yield* schemaSnapshot
      const fresh = yield* Effect.zipRight(migrate(), schemaSnapshot).pipe(Effect.provide(TestDatabase.layerEmpty))
      assert.deepStrictEqual(upgraded, fresh)
    }).pipe(Effect.provide(TestDatabase.layerEmpty)))

  it.effect("migrates next to a host's own tables named like the broker's, leaving them untouched", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE public.llms (id serial PRIMARY KEY, title text NOT NULL)`
      yield* sql`CREATE TABLE public.api_tokens (token text PRIMARY KEY)`
      yield* sql`CREATE TABLE public.inference_tasks (id bigserial PRIMARY KEY, prompt text)`
      yield* sql`CREATE TYPE public.inference_task_status AS ENUM ('todo', 'done')`
      yield* sql`INSERT INTO public.llms (title) VALUES ('host row')`
      yield* sql`INSERT INTO public.api_tokens (token) VALUES ('host-secret')`
      const before = yield* snapshotOf("public")

      const applied = yield* migrate()
      assert.deepStrictEqual(applied.map((m) => m.id), loadMigrations().map((m) => m.id))
      assert.deepStrictEqual(yield* snapshotOf("public"), before)
      const hostRows = yield* sql<{ title: string; token: string }>`
        SELECT (SELECT title FROM public.llms) AS title, (SELECT token FROM public.api_tokens) AS token`
      assert.deepStrictEqual(hostRows[0], { title: "host row", token: "host-secret" })
      const ours = new Set((yield* schemaSnapshot).columns.map((c) => c.tableName))
      for (const table of ["llms", "publisher_sessions", "inference_tasks", "inference_task_chunks", "api_tokens"]) {
        assert.isTrue(ours.has(table), `table llm_relay.${table}`)
      }
    }).pipe(Effect.provide(TestDatabase.layerEmpty)))

  it.effect("0005: a token from before principals is its own principal, and so is one a broker of 0004 inserts after", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* migrate(loadMigrations().filter((m) => m.id <= 4))
      const at = new Date(1_000)
      yield* sql`INSERT INTO llm_relay.api_tokens (id, name, role, token_hash, created_at)
        VALUES ('tok-old', 'old', 'publisher', 'hash-old', ${at})`
      yield* migrate()
      // what the previous version's statements do during a deploy: no principal_id
      yield* sql`INSERT INTO llm_relay.api_tokens (id, name, role, token_hash, created_at)
        VALUES ('tok-later', 'later', 'client', 'hash-later', ${at})`
      yield* sql`INSERT INTO llm_relay.api_tokens (id, name, role, token_hash, created_at)
        VALUES ('admin-env', 'RELAY_ADMIN_TOKEN', 'admin', 'hash-env', ${at})
        ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash, revoked_at = NULL`
      const rows = yield* sql<{ id: string; principalId: string }>`
        SELECT id, principal_id FROM llm_relay.api_tokens ORDER BY id`
      assert.deepStrictEqual(rows.map((r) => [r.id, r.principalId]), [
        ["admin-env", "admin-env"],
        ["tok-later", "tok-later"],
        ["tok-old", "tok-old"]
      ])
      const nullable = yield* sql<{ isNullable: string }>`
        SELECT is_nullable FROM information_schema.columns
        WHERE table_schema = 'llm_relay' AND table_name = 'api_tokens' AND column_name = 'principal_id'`
      assert.strictEqual(nullable[0]!.isNullable, "NO")
      assert.include((yield* schemaSnapshot).indexes, "api_tokens_principal_idx")
    }).pipe(Effect.provide(TestDatabase.layerEmpty)))

  it.effect("concurrent migrators apply each file once", () =>
    Effect.gen(function*() {
      const results = yield* Effect.all([migrate(), migrate(), migrate()], { concurrency: "unbounded" })
      const applied = results.flat().map((m) => m.id).sort()
      assert.deepStrictEqual(applied, loadMigrations().map((m) => m.id).sort())
    }).pipe(Effect.provide(TestDatabase.layerEmpty)))
})
