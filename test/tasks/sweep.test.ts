/**
 * The task half of the sweep and the start-up recovery, under TestClock:
 * each pass idempotent, the claim-ack timeout counting toward the attempt
 * limit and telling the holder, retention in batches, and recovery of tasks
 * held through a dead broker process.
 */
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import { Registry } from "../../src/registry/Registry.js"
import { Signals } from "../../src/signals/Signals.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { claim, countTasks, drain, enqueue, queueLayer, QueueTest, row, serve } from "../support/tasks.js"

/** Every row as it stands, to compare before and after a pass. */
const everything = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    sql`SELECT * FROM llm_relay.inference_tasks ORDER BY seq`.pipe(
      Effect.map((rows) => JSON.stringify(rows)),
      Effect.orDie
    )
)

describe("the periodic sweep of tasks", () => {
  it.effect("an Idempotency-Key names its task for 24 h; after that the sweep forgets it and the key makes a new task", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const request = {
        model: "l",
        path: "/v1/chat/completions",
        streaming: false,
        requestBody: { model: "l", messages: [] },
        ownerId: "owner-1",
        idempotencyKey: "retry-me"
      }
      const first = yield* queue.enqueue(request)
      yield* TestClock.adjust("23 hours")
      yield* queue.sweep
      assert.strictEqual((yield* queue.enqueue(request)).id, first.id, "within 24 h: the same task")
      yield* TestClock.adjust("1 hour")
      yield* TestClock.adjust("1 millis")
      yield* queue.sweep
      const later = yield* queue.enqueue(request)
      assert.notStrictEqual(later.id, first.id, "after 24 h: a new task")
      assert.strictEqual((yield* queue.enqueue(request)).id, later.id, "and the key names the new one")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("prompts are private: 24 h after a task ended its request, response and output are erased; the row stays", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      yield* serve("session-s", [{ name: "l", maxConcurrent: 10 }])
      const old = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.appendChunks("session-s", old.id, ["secret ", "answer"], 1)
      yield* queue.complete("session-s", old.id, { status: 200, body: { answer: "secret" } }, 1)
      yield* TestClock.adjust("2 hours")
      const recent = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.complete("session-s", recent.id, { status: 200, body: { answer: "recent" } }, 1)
      yield* TestClock.adjust("22 hours")
      yield* TestClock.adjust("1 millis") // old: 24 h and 1 ms after it ended; recent: 22 h
      const pass = yield* queue.sweep
      assert.strictEqual(pass.erased, 1)
      const stored = (id: string) =>
        sql<{ requestBody: unknown; responseBody: unknown; status: string; chunks: number }>`
          SELECT request_body, response_body, status,
                 (SELECT count(*)::int FROM llm_relay.inference_task_chunks c WHERE c.task_id = t.id) AS chunks
          FROM llm_relay.inference_tasks t WHERE id = ${id}`.pipe(Effect.map((rows) => rows[0]!), Effect.orDie)
      const erased = yield* stored(old.id)
      assert.deepStrictEqual(erased, { requestBody: null, responseBody: null, status: "completed", chunks: 0 })
      const kept = yield* stored(recent.id)
      assert.deepStrictEqual(kept.responseBody, { answer: "recent" })
      assert.isNotNull(kept.requestBody)
      assert.strictEqual((yield* queue.sweep).erased, 0, "each task is erased once")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a second pass at the same instant finds nothing to do and changes nothing", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l", maxConcurrent: 10 }])
      const finished = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.complete("session-s", finished.id, { status: 200 }, 1)
      yield* TestClock.adjust("8 days")
      yield* serve("session-idle", [{ name: "idle" }]) // never claims
      yield* enqueue("idle") // will be pending too long
      yield* TestClock.adjust("2 hours")
      const [running, unacked] = [yield* enqueue("l"), yield* enqueue("l")]
      yield* claim("session-s")
      yield* queue.ack("session-s", running.id, 1)
      yield* TestClock.adjust("31 minutes")
      const first = yield* queue.sweep
      assert.deepStrictEqual(first, {
        reverted: 1,
        unresponsive: ["session-s"],
        expired: 1,
        timedOut: 1,
        deleted: 1,
        erased: 0
      })
      assert.strictEqual((yield* row(unacked.id))!.status, "pending")
      const after = yield* everything
      const second = yield* queue.sweep
      assert.deepStrictEqual(second, { reverted: 0, unresponsive: [], expired: 0, timedOut: 0, deleted: 0, erased: 0 })
      assert.strictEqual(yield* everything, after)
    }).pipe(Effect.provide(QueueTest)))

  it.effect("an acknowledged task is not reverted by the claim-ack timeout, nor is one that sent chunks", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l", maxConcurrent: 3 }])
      const [acked, talking, silent] = [
        yield* enqueue("l"),
        yield* enqueue("l", { streaming: true }),
        yield* enqueue("l")
      ]
      yield* claim("session-s")
      yield* TestClock.adjust("20 seconds")
      yield* queue.ack("session-s", acked.id, 1)
      yield* queue.appendChunks("session-s", talking.id, ["c"], 1)
      yield* TestClock.adjust("20 seconds")
      assert.strictEqual((yield* queue.sweep).reverted, 1)
      assert.strictEqual((yield* row(acked.id))!.status, "running")
      assert.strictEqual((yield* row(talking.id))!.status, "running")
      assert.strictEqual((yield* row(silent.id))!.status, "pending")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a claim-ack revert tells the holder to drop the task, and counts as a dispatch: the third ends error", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const signals = yield* Signals
      yield* serve("session-s", [{ name: "l" }])
      const events = yield* signals.subscribeSession("session-s")
      const task = yield* enqueue("l")
      for (const attempt of [1, 2, 3]) {
        assert.deepStrictEqual((yield* claim("session-s")).map((f) => f.attempt), [attempt])
        yield* TestClock.adjust("31 seconds")
        assert.strictEqual((yield* queue.sweep).reverted, 1)
        const received = yield* drain(events)
        assert.deepStrictEqual(received.map((e) => e._tag), ["Cancel", "Freed"])
        assert.strictEqual(received[0]!._tag === "Cancel" && received[0]!.taskId, task.id)
      }
      const r = (yield* row(task.id))!
      assert.strictEqual(r.status, "error")
      assert.strictEqual(r.errorType, "MaxAttempts")
      assert.deepStrictEqual(yield* claim("session-s"), [], "no fourth dispatch")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("pending expiry, running timeout and retention all wait past their limit, not at it", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l", maxConcurrent: 10 }])
      const done = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.complete("session-s", done.id, { status: 200 }, 1)
      const running = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.ack("session-s", running.id, 1)
      yield* TestClock.adjust("30 minutes")
      assert.strictEqual((yield* queue.sweep).timedOut, 0, "exactly 30 min: still allowed")
      yield* TestClock.adjust("1 millis")
      assert.strictEqual((yield* queue.sweep).timedOut, 1)
      const waiting = yield* enqueue("l")
      yield* TestClock.adjust("1 hour")
      assert.strictEqual((yield* queue.sweep).expired, 0, "exactly 1 h: still pending")
      assert.strictEqual((yield* row(waiting.id))!.status, "pending")
      yield* TestClock.adjust("1 millis")
      assert.strictEqual((yield* queue.sweep).expired, 1)
      // `done` finished at 0: its retention ends at exactly 7 d
      yield* TestClock.setTime(7 * 24 * 3600 * 1000)
      assert.strictEqual((yield* queue.sweep).deleted, 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual((yield* queue.sweep).deleted, 1)
    }).pipe(Effect.provide(QueueTest)))

  it.effect("retention deletes in batches until nothing old is left: completed, error and cancelled alike", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      yield* serve("session-s", [{ name: "l", maxConcurrent: 10 }])
      const tasks = [
        yield* enqueue("l"),
        yield* enqueue("l"),
        yield* enqueue("l"),
        yield* enqueue("l"),
        yield* enqueue("l")
      ]
      yield* claim("session-s")
      yield* queue.appendChunks("session-s", tasks[0]!.id, ["a"], 1)
      yield* queue.complete("session-s", tasks[0]!.id, { status: 200 }, 1)
      yield* queue.complete("session-s", tasks[1]!.id, { status: 200 }, 1)
      yield* queue.fail("session-s", tasks[2]!.id, { message: "m", status: 500 }, 1)
      yield* queue.cancel(tasks[3]!.id, "c")
      yield* queue.revertHeldBy("session-s") // tasks[4] goes back to pending …
      yield* TestClock.adjust("8 days")
      yield* claim("session-s") // … and is taken again, now
      yield* queue.complete("session-s", tasks[4]!.id, { status: 200 }, 2)
      const result = yield* queue.sweep
      assert.strictEqual(result.deleted, 4, "four old terminal tasks, two per statement")
      assert.strictEqual(yield* countTasks, 1)
      assert.strictEqual((yield* row(tasks[4]!.id))!.status, "completed")
      const chunks = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM llm_relay.inference_task_chunks`
      assert.strictEqual(chunks[0]!.n, 0, "their output went with them")
    }).pipe(Effect.provide(queueLayer({ config: { retentionBatchSize: 2 } }))))
})

describe("startup recovery", () => {
  it.effect("of a dead broker's sessions: quiet tasks go back to pending, started ones end error; rows go offline", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const registry = yield* Registry
      const sql = yield* SqlClient.SqlClient
      yield* serve("dead-session", [{ name: "d", maxConcurrent: 3 }])
      yield* serve("live-session", [{ name: "e" }])
      const [quiet, started, finished] = [
        yield* enqueue("d"),
        yield* enqueue("d", { streaming: true }),
        yield* enqueue("d")
      ]
      const waiting = yield* enqueue("e")
      yield* claim("dead-session")
      yield* queue.appendChunks("dead-session", started.id, ["part"], 1)
      yield* queue.complete("dead-session", finished.id, { status: 200 }, 1)
      yield* sql`UPDATE llm_relay.publisher_sessions SET instance_id = 'instance-dead' WHERE id = 'dead-session'`
      assert.strictEqual(yield* queue.startupRecovery, 2)
      assert.strictEqual((yield* row(quiet.id))!.status, "pending")
      assert.strictEqual((yield* row(started.id))!.errorType, "PublisherDisconnected")
      assert.strictEqual((yield* row(finished.id))!.status, "completed")
      assert.strictEqual((yield* row(waiting.id))!.status, "pending")
      const rows = yield* registry.llmsOfSession("dead-session")
      assert.deepStrictEqual(rows.map((r) => r.status), ["inactive"])
      assert.deepStrictEqual((yield* registry.llmsOfSession("live-session")).map((r) => r.status), ["active"])
      assert.strictEqual(yield* queue.startupRecovery, 0, "a second run finds nothing")
      assert.deepStrictEqual((yield* claim("live-session")).map((f) => f.taskId), [waiting.id])
    }).pipe(Effect.provide(QueueTest)))
})
