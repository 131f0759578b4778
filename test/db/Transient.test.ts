/**
 * A real deadlock on the run's PostgreSQL: two transactions lock two rows in
 * opposite orders. PostgreSQL undoes one of them (40P01); `retryTransient`
 * runs it again and both land. Without it the victim's failure reaches the
 * caller: the same scene once answered a chaos run's call with a 500.
 */
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Ref } from "effect"
import { isTransient, retryTransient } from "../../src/db/Transient.js"
import * as TestDatabase from "../support/TestDatabase.js"

const scene = (retry: boolean) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE pair (id int PRIMARY KEY, n int NOT NULL)`
    yield* sql`INSERT INTO pair VALUES (1, 0), (2, 0)`
    const runs = yield* Ref.make(0)
    const aHolds = yield* Deferred.make<void>()
    const bHolds = yield* Deferred.make<void>()
    const transaction = (
      first: number,
      second: number,
      mine: Deferred.Deferred<void>,
      theirs: Deferred.Deferred<void>
    ) => {
      const body = sql.withTransaction(
        Effect.gen(function*() {
          yield* Ref.update(runs, (n) => n + 1)
          yield* sql`SELECT n FROM pair WHERE id = ${first} FOR UPDATE`
          yield* Deferred.succeed(mine, undefined)
          yield* Deferred.await(theirs)
          yield* sql`UPDATE pair SET n = n + 1 WHERE id = ${second}`
        })
      ).pipe(Effect.orDie)
      return retry ? retryTransient(body) : body
    }
    const [a, b] = yield* Effect.all([
      Effect.exit(transaction(1, 2, aHolds, bHolds)),
      Effect.exit(transaction(2, 1, bHolds, aHolds))
    ], { concurrency: 2 })
    const rows = yield* sql<{ n: number }>`SELECT n FROM pair ORDER BY id`
    return { a, b, runs: yield* Ref.get(runs), total: rows.reduce((sum, row) => sum + row.n, 0) }
  }).pipe(Effect.provide(TestDatabase.layer))

describe("retryTransient", () => {
  it.live(
    "without it, a deadlock victim's failure reaches the caller (the scene is a real deadlock)",
    () =>
      Effect.gen(function*() {
        const { a, b, runs, total } = yield* scene(false)
        const failed = [a, b].filter(Exit.isFailure)
        assert.strictEqual(failed.length, 1, "PostgreSQL undid exactly one of the two")
        const exit = failed[0]!
        assert.isTrue(Exit.isFailure(exit) && exit.cause._tag === "Die" && isTransient(exit.cause.defect))
        assert.strictEqual(runs, 2)
        assert.strictEqual(total, 1, "the victim's update was rolled back")
      }),
    30_000
  )

  it.live("with it, the undone transaction runs again and both land", () =>
    Effect.gen(function*() {
      const { a, b, runs, total } = yield* scene(true)
      assert.isTrue(Exit.isSuccess(a) && Exit.isSuccess(b))
      assert.strictEqual(runs, 3, "one of the two ran twice")
      assert.strictEqual(total, 2)
    }), 30_000)

  it("tells deadlocks and serialization failures from other SQL errors", () => {
    assert.isTrue(isTransient({ code: "40P01" }))
    assert.isTrue(isTransient({ code: "40001" }))
    assert.isFalse(isTransient({ code: "23505" }))
    assert.isFalse(isTransient(new Error("boom")))
  })
})
