/**
 * Plain SQL migrations from `migrations/NNNN_name.sql`, applied in order, each
 * in its own transaction, recorded in `llm_relay_migrations`. A transaction-level
 * advisory lock makes concurrent starts (two brokers, parallel tests) apply
 * each file once. Files are read from the package's own `migrations/` folder,
 * so the module works from `src/` (tests) and from `dist/` (installed).
 */
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

export interface Migration {
  readonly id: number
  readonly name: string
  readonly sql: string
}

const findMigrationsDir = (): string => {
  let dir = Path.dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 6; i++) {
    const candidate = Path.join(dir, "migrations")
    if (Fs.existsSync(Path.join(dir, "package.json")) && Fs.existsSync(candidate)) return candidate
    dir = Path.dirname(dir)
  }
  throw new Error("llm-relay: cannot find the migrations/ folder next to package.json")
}

export const loadMigrations = (dir: string = findMigrationsDir()): ReadonlyArray<Migration> =>
  Fs.readdirSync(dir)
    .flatMap((file) => {
      const match = /^(\d+)_(.+)\.sql$/.exec(file)
      return match ? [{ id: Number(match[1]), name: match[2]!, sql: Fs.readFileSync(Path.join(dir, file), "utf8") }] : []
    })
    .sort((a, b) => a.id - b.id)

/** The advisory lock key: any constant unique to llm-relay. */
const LOCK_KEY = 0x6c6c6d72

/** Apply every migration not yet recorded; returns the ones applied now. */
export const migrate = (migrations: ReadonlyArray<Migration> = loadMigrations()) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE IF NOT EXISTS llm_relay_migrations (
      id integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
    )`.pipe(
      // two processes racing on a fresh database both try to create the table
      Effect.catchTag("SqlError", () => Effect.void)
    )
    const applied: Array<Migration> = []
    for (const migration of migrations) {
      const didApply = yield* sql.withTransaction(
        Effect.gen(function* () {
          yield* sql`SELECT pg_advisory_xact_lock(${LOCK_KEY})`
          const done = yield* sql<{ id: number }>`SELECT id FROM llm_relay_migrations WHERE id = ${migration.id}`
          if (done.length > 0) return false
          yield* sql.unsafe(migration.sql)
          yield* sql`INSERT INTO llm_relay_migrations (id, name) VALUES (${migration.id}, ${migration.name})`
          return true
        })
      )
      if (didApply) applied.push(migration)
    }
    return applied
  }).pipe(Effect.withSpan("Migrator.migrate"))
