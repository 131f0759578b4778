/**
 * The broker's `pg` pool, made so that handing a connection back cannot
 * recurse.
 *
 * pg-pool gives a released connection to the next waiter inside the release
 * call, and @effect/sql-pg's waiter that was interrupted while it queued
 * releases the connection it is then given at once, inside that callback.
 * A run of N abandoned waiters is therefore N nested releases on one stack:
 * 2,000 `/events` readers dropping together overflowed it and the uncaught
 * RangeError ended the process (issue 14). Here every connection reaches its
 * waiter on a fresh stack (a microtask), so each release returns before the
 * next waiter runs, however many gave up: the chain is a loop, not a stack.
 */
import { SqlError } from "@effect/sql"
import { Effect, Redacted } from "effect"
import * as Pg from "pg"

type ConnectCallback = (
  err: Error | undefined,
  client: Pg.PoolClient | undefined,
  done: (release?: unknown) => void
) => void

export class FlatPool extends Pg.Pool {
  // The callback form is the one @effect/sql-pg uses; the promise form is untouched.
  override connect(): Promise<Pg.PoolClient>
  override connect(callback: ConnectCallback): void
  override connect(callback?: ConnectCallback): Promise<Pg.PoolClient> | void {
    if (callback === undefined) return super.connect()
    super.connect((err, client, done) => queueMicrotask(() => callback(err, client, done)))
  }
}

export interface PoolOptions {
  readonly url: Redacted.Redacted<string>
  readonly maxConnections?: number | undefined
  readonly applicationName?: string | undefined
}

/**
 * A `FlatPool` for `PgClient.layerFromPool`: checked with `SELECT 1` (5 s at
 * most, as `PgClient.make` does) and ended with the scope.
 */
export const acquire = (options: PoolOptions) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const pool = new FlatPool({
        connectionString: Redacted.value(options.url),
        ...(options.maxConnections !== undefined ? { max: options.maxConnections } : {}),
        application_name: options.applicationName ?? "llm-relay"
      })
      // a connection's own error reaches the query that uses it; the pool's copy would be unhandled
      pool.on("error", () => undefined)
      yield* Effect.tryPromise({
        try: () => pool.query("SELECT 1"),
        catch: (cause) => new SqlError.SqlError({ cause, message: "PgClient: Failed to connect" })
      }).pipe(
        Effect.timeoutFail({
          duration: "5 seconds",
          onTimeout: () =>
            new SqlError.SqlError({
              cause: new Error("Connection timed out"),
              message: "PgClient: Connection timed out"
            })
        }),
        Effect.tapError(() => Effect.promise(() => pool.end()))
      )
      return pool as Pg.Pool
    }),
    (pool) => Effect.promise(() => pool.end()).pipe(Effect.interruptible, Effect.timeoutOption(1000))
  )
