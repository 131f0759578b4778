/**
 * Handing a connection back must not recurse: a long run of waiters that gave
 * up while queued for a connection (each releases what it is then given) once
 * overflowed the stack inside pg-pool and ended the broker (issue 14). The
 * first test shows the stock pool does overflow, so the second can fail.
 */
import * as Pg from "pg"
import { assert, describe, it } from "vitest"
import { FlatPool } from "../../src/db/Pool.js"
import { serverUrl } from "../support/TestDatabase.js"

/** Queues `n` waiters behind the pool's one connection, each releasing at once; then hands the connection back. */
const abandonedWaiters = async (pool: Pg.Pool, n: number) => {
  const held = await pool.connect()
  let served = 0
  const allServed = new Promise<void>((resolve) => {
    for (let i = 0; i < n; i++) {
      pool.connect((_err, _client, done) => {
        done()
        if (++served === n) resolve()
      })
    }
  })
  let thrown: unknown
  try {
    held.release()
  } catch (e) {
    thrown = e
  }
  return { thrown, allServed, served: () => served }
}

const N = 20_000

describe("the connection pool", () => {
  it("stock pg-pool: a run of abandoned waiters overflows the stack on hand-back", async () => {
    const pool = new Pg.Pool({ connectionString: serverUrl(), max: 1 })
    try {
      const { thrown } = await abandonedWaiters(pool, N)
      assert.instanceOf(thrown, RangeError)
    } finally {
      // the pool is broken now (its connection lost mid-hand-back): end it without waiting for it
      void pool.end().catch(() => undefined)
    }
  })

  it("FlatPool: every waiter is served in turn, nothing thrown, the pool still works", async () => {
    const pool = new FlatPool({ connectionString: serverUrl(), max: 1 })
    try {
      const { allServed, served, thrown } = await abandonedWaiters(pool, N)
      assert.isUndefined(thrown)
      await allServed
      assert.strictEqual(served(), N)
      const result = await pool.query<{ one: number }>("SELECT 1 AS one")
      assert.strictEqual(result.rows[0]!.one, 1)
    } finally {
      await pool.end()
    }
  })
})
