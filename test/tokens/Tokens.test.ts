/**
 * The remembered lookups of the hot path (a token's principal, a session's
 * owner) are shared by concurrent requests: one request leaving must not
 * take the others' answers with it. Found by `npm run chaos`: a publisher
 * dropping its connection mid-lookup made its neighbours' posts answer an
 * empty 503, and a re-sent chunk batch was stored twice.
 */
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Option, TestServices } from "effect"
import * as Broker from "../../src/Broker.js"
import { Registry } from "../../src/registry/Registry.js"
import { Sessions } from "../../src/sessions/Sessions.js"
import { Tokens } from "../../src/tokens/Tokens.js"
import { ConfigTest } from "../support/layers.js"
import { provider } from "../support/registry.js"
import * as TestDatabase from "../support/TestDatabase.js"

const Services = Broker.services.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))

/**
 * Holds an exclusive lock on `table` (reads of it wait) until the returned
 * effect is run; the lock is taken when this returns.
 */
const lockTable = (table: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const locked = yield* Deferred.make<void>()
    const release = yield* Deferred.make<void>()
    yield* Effect.fork(
      sql.withTransaction(Effect.gen(function*() {
        yield* sql.unsafe(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`)
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(release)
      })).pipe(Effect.orDie)
    )
    yield* Deferred.await(locked)
    return Deferred.succeed(release, undefined)
  })

/** Real time passes until `n` statements wait on a lock. */
const waitingOnLock = (n: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    for (let i = 0; i < 250; i++) {
      const rows = yield* sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock'`.pipe(Effect.orDie)
      if (rows[0]!.n >= n) return
      yield* TestServices.provideLive(Effect.sleep("20 millis"))
    }
    assert.fail("the lookup never reached the lock")
  })

describe("shared lookups survive the request that started them", () => {
  it.scoped("a token's lookup: the first caller interrupted, the second still gets the principal", () =>
    Effect.gen(function*() {
      const tokens = yield* Tokens
      const { token } = yield* tokens.create({ role: "publisher", name: "shared" })
      const release = yield* lockTable("llm_relay.api_tokens")
      const first = yield* Effect.fork(tokens.verify(token))
      yield* waitingOnLock(1)
      const second = yield* Effect.fork(tokens.verify(token)) // waits for the first one's lookup
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(first).pipe(Effect.fork)
      yield* release
      const principal = yield* TestServices.provideLive(Fiber.join(second).pipe(Effect.timeout("5 seconds")))
      assert.strictEqual(Option.getOrThrow(principal).name, "shared")
    }).pipe(Effect.provide(Services)))

  it.scoped("a session's owner: the first caller interrupted, the second is still authorized", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sessions = yield* Sessions
      yield* registry.register("owner-1", { sessionId: "sess-shared", providers: [provider("shared-llm")] })
      const principal = { id: "owner-1", tokenId: "tok-1", name: "p", role: "publisher" as const }
      const release = yield* lockTable("llm_relay.publisher_sessions")
      const first = yield* Effect.fork(sessions.authorize(principal, "sess-shared"))
      yield* waitingOnLock(1)
      const second = yield* Effect.fork(Effect.either(sessions.authorize(principal, "sess-shared")))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(first).pipe(Effect.fork)
      yield* release
      const outcome = yield* TestServices.provideLive(Fiber.join(second).pipe(Effect.timeout("5 seconds")))
      assert.strictEqual(outcome._tag, "Right")
    }).pipe(Effect.provide(Services)))
})
