/**
 * A fresh, migrated database per layer build, on the run's server
 * (globalSetup). Dropped when the layer's scope closes. Tests never see what
 * another file or an earlier run left behind.
 */
import { Reactivity } from "@effect/experimental"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted } from "effect"
import * as Crypto from "node:crypto"
import { inject } from "vitest"
import { layerUrl } from "../../src/db/Database.js"
import { migrate } from "../../src/db/Migrator.js"

export const serverUrl = (): string => inject("databaseUrl")

const withDatabase = (url: string, database: string): string => {
  const u = new URL(url)
  u.pathname = `/${database}`
  return u.toString()
}

/** Run statements on the server's maintenance database (CREATE/DROP DATABASE). */
const onAdmin = <A>(f: (sql: SqlClient.SqlClient) => Effect.Effect<A, unknown>) =>
  Effect.scoped(
    Effect.gen(function*() {
      const client = yield* PgClient.make({ url: Redacted.make(serverUrl()), maxConnections: 1 })
      return yield* f(client)
    })
  ).pipe(Effect.provide(Reactivity.layer), Effect.orDie)

/** Create an empty database; dropped (with its connections) when the scope closes. */
export const createDatabase = Effect.gen(function*() {
  const name = `relay_test_${Crypto.randomBytes(6).toString("hex")}`
  yield* Effect.acquireRelease(
    onAdmin((sql) => sql.unsafe(`CREATE DATABASE ${name}`)),
    () => onAdmin((sql) => sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)).pipe(Effect.ignore)
  )
  return { name, url: withDatabase(serverUrl(), name) }
})

/** An empty database (no migrations): for the migration tests. */
export const layerEmpty = Layer.unwrapScoped(
  Effect.map(createDatabase, (db) => layerUrl(Redacted.make(db.url)))
)

/** A migrated database with its PgClient and SqlClient. */
export const layer = Layer.effectDiscard(migrate()).pipe(Layer.provideMerge(layerEmpty), Layer.orDie)
