/**
 * The broker's database: `DATABASE_URL` when set, else an embedded PostgreSQL
 * under `RELAY_DATA_DIR`. Either way one `PgClient` (and its `SqlClient`).
 */
import { PgClient } from "@effect/sql-pg"
import { Config, Effect, Layer, Option, Redacted, String as Str } from "effect"
import * as Embedded from "./Embedded.js"
import * as Pool from "./Pool.js"

/**
 * Column names come back camelCased; JSON column contents are left exactly as
 * stored (a request body's `max_tokens` must stay `max_tokens`).
 */
export const clientOptions = {
  transformResultNames: Str.snakeToCamel,
  transformQueryNames: Str.camelToSnake,
  transformJson: false
} as const

/**
 * A `PgClient` on a URL, over the pool whose connection hand-back cannot
 * recurse (Pool.ts).
 */
export const layerUrl = (url: Redacted.Redacted<string>, options?: { readonly maxConnections?: number }) =>
  PgClient.layerFromPool({
    acquire: Pool.acquire({ url, maxConnections: options?.maxConnections, applicationName: "llm-relay" }),
    ...clientOptions,
    applicationName: "llm-relay"
  })

/** Where the database is, for the start-up log line (never the password). */
export const describeUrl = (url: string): string => {
  try {
    const u = new URL(url)
    if (u.password) u.password = "***"
    return u.toString()
  } catch {
    return "(unparseable DATABASE_URL)"
  }
}

export interface DatabaseInfo {
  readonly description: string
}

export const DatabaseConfig = Config.all({
  url: Config.option(Config.redacted("DATABASE_URL")),
  dataDir: Config.string("RELAY_DATA_DIR").pipe(Config.withDefault("./.llm-relay")),
  maxConnections: Config.integer("RELAY_DB_MAX_CONNECTIONS").pipe(Config.withDefault(20))
})

/**
 * While the embedded server runs: the runtime's handler takes the first
 * SIGINT/SIGTERM (interrupt, finalizers, server stopped) and then removes
 * itself, so a second one (Ctrl-C twice, or npm forwarding the terminal's
 * signal to a process that got it already) would kill the process at once and
 * leave the server running. Repeats are ignored; a third forces the exit, which
 * still stops the server (Embedded's exit hook).
 */
const repeatedSignalsGuard = Effect.acquireRelease(
  Effect.sync(() => {
    let seen = 0
    const onSignal = () => {
      seen++
      if (seen === 2) console.error("llm-relay: stopping (the embedded PostgreSQL too); a third signal forces the exit")
      if (seen >= 3) process.exit(130)
    }
    process.on("SIGINT", onSignal)
    process.on("SIGTERM", onSignal)
    return onSignal
  }),
  (onSignal) =>
    Effect.sync(() => {
      process.off("SIGINT", onSignal)
      process.off("SIGTERM", onSignal)
    })
)

/**
 * `DATABASE_URL` set: a PgClient on it. Unset: start the embedded server first
 * (stopped when the layer's scope closes).
 */
export const layerFromEnv = Layer.unwrapScoped(
  Effect.gen(function*() {
    const config = yield* DatabaseConfig
    const url = Option.filter(config.url, (u) => Redacted.value(u).trim().length > 0)
    if (Option.isSome(url)) {
      yield* Effect.logInfo(`database: ${describeUrl(Redacted.value(url.value))}`)
      return layerUrl(url.value, { maxConnections: config.maxConnections })
    }
    yield* repeatedSignalsGuard
    const server = yield* Embedded.start({
      dataDir: config.dataDir,
      onLog: (line) => {
        if (/FATAL|PANIC|ERROR/.test(line)) console.error(`[embedded-postgres] ${line.trim()}`)
      },
      onNotice: (line) => console.error(`llm-relay: ${line}`)
    })
    yield* Effect.logInfo(`database: embedded PostgreSQL in ${server.dataDir} (127.0.0.1:${server.port})`)
    return layerUrl(server.url, { maxConnections: config.maxConnections })
  })
)
