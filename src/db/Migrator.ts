/**
 * Plain SQL migrations from `migrations/NNNN_name.sql`, applied in order, each
 * in its own transaction, recorded in `llm_relay.migrations`. The broker's
 * tables live in their own PostgreSQL schema `llm_relay` (a fixed name), so a
 * host app that embeds the broker keeps its own tables of any name; the
 * migrations table lives there too, as `@effect/cluster`'s `SqlMessageStorage`
 * keeps its own. A transaction-level advisory lock makes concurrent starts (two
 * brokers, parallel tests) apply each file once. Files are read from the
 * package's own `migrations/` folder, so the module works from `src/` (tests)
 * and from `dist/` (installed).
 *
 * Migrations are expand/contract: several broker instances of different
 * versions share one database during a deploy, so a migration only adds what
 * the new code needs (a column with a default, a table, an index) while the
 * old code keeps working, and a later migration removes what no running
 * version reads any more. Never rename or drop in the same release that stops
 * using a thing; never edit a migration once it landed (migrations/README.md).
 */
import { SqlClient, SqlSchema } from "@effect/sql"
import { Effect, Option, Schema } from "effect"
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
      return match
        ? [{ id: Number(match[1]), name: match[2]!, sql: Fs.readFileSync(Path.join(dir, file), "utf8") }]
        : []
    })
    .sort((a, b) => a.id - b.id)

/** The advisory lock key: any constant unique to llm-relay. */
const LOCK_KEY = 0x6c6c6d72

const Recorded = Schema.Struct({ id: Schema.Int })

/** Apply every migration not yet recorded; returns the ones applied now. */
export const migrate = (migrations: ReadonlyArray<Migration> = loadMigrations()) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    /** One transaction holding the migration lock: concurrent migrators take turns. */
    const locked = <A, E, R>(body: Effect.Effect<A, E, R>) =>
      sql.withTransaction(Effect.zipRight(sql`SELECT pg_advisory_xact_lock(${LOCK_KEY})`, body))
    const findRecorded = SqlSchema.findOne({
      Request: Schema.Int,
      Result: Recorded,
      execute: (id) => sql`SELECT id FROM llm_relay.migrations WHERE id = ${id}`
    })
    const isRecorded = (id: number) =>
      Effect.map(Effect.catchTag(findRecorded(id), "ParseError", Effect.die), Option.isSome)

    yield* locked(Effect.gen(function*() {
      // Checked first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database
      // even when the schema is there (a DBA may have made it for the role).
      yield* sql`DO $$ BEGIN
        IF to_regnamespace('llm_relay') IS NULL THEN CREATE SCHEMA llm_relay; END IF;
      END $$`
      yield* sql`CREATE TABLE IF NOT EXISTS llm_relay.migrations (
        id integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
      )`
      // A database migrated by a broker before 0002 recorded its migrations in
      // `llm_relay_migrations`, created unqualified (wherever the search_path
      // pointed, usually `public`), so that is how it is looked up. Its rows
      // are carried over; the table stays, so a broker of the old version
      // started by mistake finds its migrations applied and stops on the
      // missing tables instead of creating a second, empty set in `public`.
      yield* sql`DO $$ BEGIN
        IF to_regclass('llm_relay_migrations') IS NOT NULL THEN
          INSERT INTO llm_relay.migrations (id, name, applied_at)
          SELECT id, name, applied_at FROM llm_relay_migrations
          ON CONFLICT (id) DO NOTHING;
        END IF;
      END $$`
    }))

    const applied: Array<Migration> = []
    for (const migration of migrations) {
      const didApply = yield* locked(
        Effect.gen(function*() {
          if (yield* isRecorded(migration.id)) return false
          // For this transaction only (never on the host's pool): unqualified
          // names in a migration file resolve, and are created, in `llm_relay`
          // first. 0001 predates the schema and relies on it; 0002 relies on
          // the rest of the path to find tables the old broker created.
          yield* sql`SELECT set_config('search_path', 'llm_relay, ' || current_setting('search_path'), true)`
          yield* sql.unsafe(migration.sql)
          yield* sql`INSERT INTO llm_relay.migrations (id, name) VALUES (${migration.id}, ${migration.name})`
          return true
        })
      )
      if (didApply) applied.push(migration)
    }
    return applied
  }).pipe(Effect.withSpan("Migrator.migrate"))
