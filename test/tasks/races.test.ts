/**
 * Compare-and-set races on real connections: a pool of 16, so a dozen fibers
 * really do run their statements at once. Each race checks that there was
 * exactly one winner per task, that the loser got its typed error, and that
 * the row agrees with who won.
 */
import { SqlClient } from "@effect/sql"
import { assert, it, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Ref, Stream, TestClock } from "effect"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { enqueue, live, queueLayer, serve, tagOf } from "../support/tasks.js"

const CONNECTIONS = 16
const N = 100

let counter = 0
/** A pool of its own for one race, served by `sessions` sessions (`${prefix}-s0`, …) of capacity `capacity`. */
const arena = (sessions: number, capacity: number) =>
  Effect.gen(function*() {
    const prefix = `race-${++counter}`
    const ids = Array.from({ length: sessions }, (_, i) => `${prefix}-s${i}`)
    for (const s of ids) yield* serve(s, [{ name: `${s}-row`, pool: `${prefix}-pool`, maxConcurrent: capacity }])
    return { pool: `${prefix}-pool`, sessions: ids }
  })

const enqueueMany = (pool: string, n: number) =>
  Effect.forEach(Array.from({ length: n }), () => Effect.map(enqueue(pool), (t): string => t.id), { concurrency: 4 })

/** A race's setup: `n` tasks in a pool of their own, all claimed by its one session (attempt 1). */
const heldByOne = (n: number) =>
  Effect.gen(function*() {
    const { pool, sessions: [s] } = yield* arena(1, n)
    yield* enqueueMany(pool, n)
    const frames = yield* Effect.flatMap(TaskQueue, (q) => q.claimFor(s!))
    return { pool, s: s!, frames }
  })

interface Row {
  readonly id: string
  readonly status: string
  readonly claimedBy: string | null
  readonly attempts: number
  readonly errorType: string | null
  readonly chunkCount: number
}
const rowsOf = (pool: string) =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) =>
      sql<
        Row
      >`SELECT id, status, claimed_by, attempts, error_type, chunk_count FROM llm_relay.inference_tasks WHERE pool = ${pool}`
        .pipe(
          Effect.map((rows) => new Map(rows.map((r) => [r.id, r] as const))),
          Effect.orDie
        )
  )

/** Resolves once `n` calls of `arrive` happened: a trigger in the middle of a race, or a barrier. */
const countdown = (n: number) =>
  Effect.gen(function*() {
    const count = yield* Ref.make(0)
    const reached = yield* Deferred.make<void>()
    const arrive = Effect.flatMap(
      Ref.updateAndGet(count, (c) => c + 1),
      (c) => (c >= n ? Deferred.succeed(reached, undefined) : Effect.void)
    )
    return { arrive, reached: Deferred.await(reached) }
  })

layer(queueLayer({ maxConnections: CONNECTIONS }), { timeout: 120_000 })("races on separate connections", (it) => {
  it.effect("12 claimers, on 12 connections at once, while tasks keep arriving: every task claimed exactly once", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const { pool, sessions } = yield* arena(12, 1000)
      const before = yield* enqueueMany(pool, 200)
      const barrier = yield* countdown(sessions.length)
      const enqueuerDone = yield* Deferred.make<void>()
      const pids = new Set<number>()

      const claimer = (s: string) =>
        Effect.gen(function*() {
          const mine: Array<string> = []
          // First round: all 12 open a transaction, prove they hold 12 connections at
          // once (the barrier), then claim together; SKIP LOCKED must split the rows.
          const first = yield* sql.withTransaction(
            Effect.gen(function*() {
              const [{ pid }] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
              pids.add(pid!)
              yield* barrier.arrive
              yield* live(barrier.reached, "12 claimers holding 12 connections at once", "20 seconds")
              return yield* queue.claimFor(s)
            })
          )
          mine.push(...first.map((f) => f.taskId))
          // Then claim as tasks come, until the enqueuer is done and nothing is left.
          while (true) {
            const done = yield* Deferred.isDone(enqueuerDone)
            const frames = yield* queue.claimFor(s)
            mine.push(...frames.map((f) => f.taskId))
            for (const f of frames) assert.strictEqual(f.attempt, 1)
            if (frames.length === 0 && done) return mine
          }
        })

      const enqueuer = Effect.gen(function*() {
        yield* barrier.reached
        const later = yield* enqueueMany(pool, 300)
        yield* Deferred.succeed(enqueuerDone, undefined)
        return later
      })

      const [taken, later] = yield* Effect.all([
        Effect.forEach(sessions, claimer, { concurrency: "unbounded" }),
        enqueuer
      ], { concurrency: "unbounded" })

      assert.strictEqual(pids.size, 12, "each claimer had its own connection")
      const all = taken.flat()
      assert.strictEqual(all.length, 500, "500 claims")
      assert.strictEqual(new Set(all).size, 500, "no task claimed twice")
      assert.sameMembers(all, [...before, ...later], "every task claimed")
      const rows = yield* rowsOf(pool)
      for (const [i, s] of sessions.entries()) {
        for (const id of taken[i]!) {
          const r = rows.get(id)!
          assert.strictEqual(r.status, "claimed")
          assert.strictEqual(r.claimedBy, s, "the row names the claimer that got the frame")
          assert.strictEqual(r.attempts, 1)
        }
      }
      const laterWinners = sessions.filter((_, i) => taken[i]!.some((id) => later.includes(id)))
      assert.isAtLeast(laterWinners.length, 2, "the arriving tasks were contended for")
    }))

  it.effect("complete against cancel: one wins each task, the other learns it", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const { pool, s, frames } = yield* heldByOne(N)
      assert.strictEqual(frames.length, N)
      const outcomes = yield* Effect.forEach(frames, (f) =>
        Effect.all([
          Effect.either(queue.complete(s, f.taskId, { status: 200, body: { won: true } }, f.attempt)),
          queue.cancel(f.taskId, "the client went away")
        ], { concurrency: 2 }), { concurrency: CONNECTIONS / 2 })
      const rows = yield* rowsOf(pool)
      let completed = 0
      for (const [i, [complete, cancelled]] of outcomes.entries()) {
        const r = rows.get(frames[i]!.taskId)!
        if (tagOf(complete) === "ok") {
          completed++
          assert.strictEqual(r.status, "completed")
          assert.strictEqual(cancelled.status, "completed", "cancel returns the finished task as it is")
        } else {
          assert.strictEqual(tagOf(complete), "TaskCancelled")
          assert.strictEqual(r.status, "cancelled")
          assert.strictEqual(cancelled.status, "cancelled")
        }
      }
      assert.strictEqual([...rows.values()].filter((r) => r.status === "completed").length, completed)
    }))

  it.effect("complete against a disconnect: each task is completed or back to pending, never both", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const { pool, s, frames } = yield* heldByOne(N)
      const midway = yield* countdown(N / 3)
      const revert = yield* Effect.fork(Effect.zipRight(midway.reached, queue.revertHeldBy(s)))
      const results = yield* Effect.forEach(
        frames,
        (f) => Effect.zipRight(midway.arrive, Effect.either(queue.complete(s, f.taskId, { status: 200 }, f.attempt))),
        { concurrency: 12 }
      )
      const reverted = yield* Fiber.join(revert)
      const rows = yield* rowsOf(pool)
      for (const [i, result] of results.entries()) {
        const r = rows.get(frames[i]!.taskId)!
        if (tagOf(result) === "ok") {
          assert.strictEqual(r.status, "completed")
        } else {
          assert.strictEqual(tagOf(result), "TaskNotHeld")
          assert.strictEqual(r.status, "pending")
          assert.isNull(r.claimedBy)
          assert.strictEqual(r.attempts, 1)
        }
      }
      assert.strictEqual(reverted, [...rows.values()].filter((r) => r.status === "pending").length)
    }))

  it.effect("chunks against a disconnect: output that was stored ends the task error, never back in the queue", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const { pool, s, frames } = yield* heldByOne(N)
      const midway = yield* countdown(N / 3)
      const revert = yield* Effect.fork(Effect.zipRight(midway.reached, queue.revertHeldBy(s)))
      const results = yield* Effect.forEach(
        frames,
        (f) => Effect.zipRight(midway.arrive, Effect.either(queue.appendChunks(s, f.taskId, ["part"], f.attempt))),
        { concurrency: 12 }
      )
      yield* Fiber.join(revert)
      const rows = yield* rowsOf(pool)
      const stored = yield* sql<
        { taskId: string }
      >`SELECT task_id FROM llm_relay.inference_task_chunks c JOIN llm_relay.inference_tasks t ON t.id = c.task_id WHERE t.pool = ${pool}`
      const withOutput = new Set(stored.map((c) => c.taskId))
      for (const [i, result] of results.entries()) {
        const id = frames[i]!.taskId
        const r = rows.get(id)!
        if (tagOf(result) === "ok") {
          assert.isTrue(withOutput.has(id))
          assert.strictEqual(r.status, "error")
          assert.strictEqual(r.errorType, "PublisherDisconnected")
        } else {
          assert.strictEqual(tagOf(result), "TaskNotHeld")
          assert.isFalse(withOutput.has(id), "a refused batch is not stored")
          assert.strictEqual(r.status, "pending")
          assert.strictEqual(r.chunkCount, 0)
        }
      }
    }))

  it.effect("claims against cancels of pending tasks: a task is taken or cancelled, and a taken one knows its holder", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const { pool, sessions } = yield* arena(4, N)
      const ids = yield* enqueueMany(pool, N)
      const [claims, cancels] = yield* Effect.all([
        Effect.forEach(sessions, (s) => Effect.map(queue.claimFor(s), (frames) => frames.map((f) => f.taskId)), {
          concurrency: "unbounded"
        }),
        Effect.forEach(ids, (id) => queue.cancel(id, "no longer wanted"), { concurrency: 8 })
      ], { concurrency: "unbounded" })
      const taken = new Set(claims.flat())
      assert.strictEqual(taken.size, claims.flat().length, "no task claimed twice")
      const rows = yield* rowsOf(pool)
      for (const [i, id] of ids.entries()) {
        const r = rows.get(id)!
        assert.strictEqual(r.status, "cancelled", "every task ends cancelled")
        if (taken.has(id)) {
          assert.isNotNull(r.claimedBy, "claimed before it was cancelled: its holder is known (and told)")
          assert.isNotNull(cancels[i]!.claimedBy)
        } else {
          assert.isNull(r.claimedBy)
          assert.strictEqual(r.attempts, 0)
        }
      }
    }))

  it.effect("a holder repeating its result at the same instant: both posts succeed, one answer stays", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const { pool, s, frames } = yield* heldByOne(N)
      const results = yield* Effect.forEach(
        frames,
        (f) =>
          Effect.all(
            [1, 2].map((n) => Effect.either(queue.complete(s, f.taskId, { status: 200, body: { n } }, f.attempt))),
            { concurrency: 2 }
          ),
        { concurrency: CONNECTIONS / 2 }
      )
      assert.deepStrictEqual(results.flat().map((o) => tagOf(o)), Array.from({ length: 2 * N }, () => "ok"))
      for (const r of (yield* rowsOf(pool)).values()) assert.strictEqual(r.status, "completed")
    }))

  it.effect("chunk batches posted at once for one task are each stored once, numbered without gaps, and reach a waiter in that order", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const { s, frames: [frame] } = yield* heldByOne(1)
      const id = frame!.taskId
      const waiter = yield* queue.waitFor(id, "1 hour")
      const received = yield* Effect.fork(Effect.map(Stream.runCollect(waiter.chunks), (c) => [...c]))
      const batches = Array.from({ length: 40 }, (_, b) => [`b${b}-1`, `b${b}-2`])
      yield* Effect.forEach(batches, (batch) => queue.appendChunks(s, id, batch, frame!.attempt), {
        concurrency: 12,
        discard: true
      })
      yield* queue.complete(s, id, { status: 200 }, frame!.attempt)
      const stored = yield* sql<{ seq: number; chunks: ReadonlyArray<string> }>`
        SELECT seq, chunks FROM llm_relay.inference_task_chunks WHERE task_id = ${id} ORDER BY seq`
      assert.deepStrictEqual(stored.map((b) => b.seq), Array.from({ length: 40 }, (_, i) => i + 1))
      assert.sameDeepMembers(stored.map((b) => [...b.chunks]), batches, "each batch stored once, whole")
      assert.deepStrictEqual(
        yield* live(Fiber.join(received), "the waiter's stream", "20 seconds"),
        stored.flatMap((b) => b.chunks)
      )
    }).pipe(Effect.scoped))
})

// The sweep is global: this race gets a database of its own, or it would revert the other races' tasks.
it.effect("ack against the claim-ack timeout: each task runs or goes back, and the sweep counts what it took", () =>
  Effect.gen(function*() {
    const queue = yield* TaskQueue
    const { pool, s, frames } = yield* heldByOne(N)
    yield* TestClock.adjust("31 seconds")
    const midway = yield* countdown(N / 3)
    const sweep = yield* Effect.fork(Effect.zipRight(midway.reached, queue.sweep))
    const results = yield* Effect.forEach(
      frames,
      (f) => Effect.zipRight(midway.arrive, Effect.either(queue.ack(s, f.taskId, f.attempt))),
      { concurrency: 12 }
    )
    const swept = yield* Fiber.join(sweep)
    const rows = yield* rowsOf(pool)
    for (const [i, result] of results.entries()) {
      const r = rows.get(frames[i]!.taskId)!
      assert.strictEqual(r.status, tagOf(result) === "ok" ? "running" : "pending")
      if (tagOf(result) !== "ok") assert.strictEqual(tagOf(result), "TaskNotHeld")
    }
    assert.strictEqual(swept.reverted, [...rows.values()].filter((r) => r.status === "pending").length)
  }).pipe(Effect.provide(queueLayer({ maxConnections: CONNECTIONS }))))
