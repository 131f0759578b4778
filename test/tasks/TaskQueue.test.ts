/**
 * The task queue against real PostgreSQL: the task row as stored and drained, every typed
 * outcome of a lost compare-and-set, disconnect handling, the timeouts under
 * TestClock, waiters, and a claim race on separate connections.
 */
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Option, Stream, TestClock } from "effect"
import { InstanceId } from "../../src/config.js"
import { Signals } from "../../src/signals/Signals.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { insertPublic } from "../support/registry.js"
import { claim, countTasks, drain, enqueue, QueueTest, row, serve } from "../support/tasks.js"

describe("the task row", () => {
  it.effect("a fresh task is pending, with claim and completion fields null and streaming false", () =>
    Effect.gen(function*() {
      yield* serve("session-a", [{ name: "qwen-prod-1", pool: "qwen-pool" }])
      const task = yield* enqueue("qwen-pool")
      assert.strictEqual(task.status, "pending")
      assert.isNull(task.claimedBy)
      assert.isNull(task.claimedAt)
      assert.isNull(task.streamStartedAt)
      assert.isNull(task.completedAt)
      assert.isNull(task.responseBody)
      assert.isFalse(task.streaming)
      assert.strictEqual(task.attempts, 0)
      assert.strictEqual(task.pool, "qwen-pool")
      assert.isNull(task.llmName, "a pool task is not pinned")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a streaming task's flag and structured request and response bodies come back exactly as stored", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-a", [{ name: "qwen-prod-1" }])
      const requestBody = {
        messages: [{ role: "user", content: "hello" }],
        temperature: 0.2,
        tools: [{ type: "function", function: { name: "noop" } }]
      }
      const task = yield* enqueue("qwen-prod-1", { streaming: true, body: requestBody })
      const [frame] = yield* claim("session-a")
      assert.deepStrictEqual(frame!.body, requestBody)
      assert.isTrue(frame!.streaming)
      const responseBody = { choices: [{ message: { role: "assistant", content: "world" } }] }
      yield* TestClock.setTime(5_000)
      yield* queue.complete("session-a", task.id, { status: 200, body: responseBody }, frame!.attempt)
      const done = Option.getOrThrow(yield* queue.get(task.id))
      assert.isTrue(done.streaming)
      assert.deepStrictEqual(done.responseBody, responseBody)
      assert.strictEqual(done.completedAt?.getTime(), 5_000)
      assert.strictEqual(done.responseStatus, 200)
    }).pipe(Effect.provide(QueueTest)))

  it.effect("drains a pool oldest first (priority before age); other pools and finished tasks stay out", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-a", [{ name: "a-1", pool: "pool-a", maxConcurrent: 10 }])
      yield* serve("session-b", [{ name: "b-1", pool: "pool-b" }])
      const t1 = yield* enqueue("pool-a")
      yield* TestClock.adjust("5 millis")
      const t2 = yield* enqueue("pool-a")
      const t3 = yield* enqueue("pool-a") // same millisecond as t2: enqueue order decides
      yield* enqueue("pool-b")
      const finished = yield* enqueue("pool-a")
      yield* queue.cancel(finished.id, "not wanted")
      const urgent = yield* enqueue("pool-a", { priority: 5 })
      const frames = yield* claim("session-a")
      assert.deepStrictEqual(frames.map((f) => f.taskId), [urgent.id, t1.id, t2.id, t3.id])
    }).pipe(Effect.provide(QueueTest)))

  it.effect("the pending tasks a bind would drain are listed in claim order, and listing them takes nothing", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-a", [{ name: "a-1", pool: "pool-a" }, { name: "a-2", pool: "pool-a" }])
      yield* serve("session-b", [{ name: "b-1", pool: "pool-b" }])
      yield* serve("session-c", [{ name: "c-1", pool: "pool-c" }])
      const t1 = yield* enqueue("pool-a")
      yield* TestClock.adjust("5 millis")
      const t2 = yield* enqueue("pool-a")
      yield* TestClock.adjust("5 millis")
      const t3 = yield* enqueue("pool-b")
      yield* enqueue("pool-c") // another pool: out
      const done = yield* enqueue("pool-a")
      yield* queue.cancel(done.id, "no longer pending: out")
      const urgent = yield* enqueue("pool-b", { priority: 3 })
      const drained = yield* queue.findPendingForPools(["pool-a", "pool-b"])
      assert.deepStrictEqual(drained.map((t) => t.id), [urgent.id, t1.id, t2.id, t3.id])
      assert.deepStrictEqual(drained.map((t) => t.pool), ["pool-b", "pool-a", "pool-a", "pool-b"])
      assert.isTrue(drained.every((t) => t.status === "pending"))
      assert.deepStrictEqual((yield* queue.findPendingForPools(["pool-a", "pool-b"], 2)).map((t) => t.id), [
        urgent.id,
        t1.id
      ])
      assert.strictEqual((yield* row(t1.id))!.status, "pending", "reading takes nothing")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a session's disconnect reverts only its own claimed and running tasks, never finished ones", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-A", [{ name: "la", pool: "p", maxConcurrent: 3 }])
      yield* serve("session-B", [{ name: "lb", pool: "q" }])
      const [claimed, running, done] = [yield* enqueue("p"), yield* enqueue("p"), yield* enqueue("p")]
      const other = yield* enqueue("q")
      const framesA = yield* claim("session-A")
      yield* claim("session-B")
      assert.strictEqual(framesA.length, 3)
      yield* queue.ack("session-A", running.id, 1)
      yield* queue.complete("session-A", done.id, { status: 200, body: {} }, 1)
      const reverted = yield* queue.revertHeldBy("session-A")
      assert.strictEqual(reverted, 2)
      assert.strictEqual((yield* row(claimed.id))!.status, "pending")
      assert.strictEqual((yield* row(running.id))!.status, "pending")
      assert.strictEqual((yield* row(done.id))!.status, "completed")
      assert.strictEqual((yield* row(done.id))!.claimedBy, "session-A")
      assert.strictEqual((yield* row(other.id))!.status, "claimed")
      assert.strictEqual((yield* row(other.id))!.claimedBy, "session-B")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("retention deletes terminal tasks finished over 7 d ago (with their chunks), keeps recent and live ones", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      yield* serve("session-a", [{ name: "l", maxConcurrent: 10 }])
      const old = yield* enqueue("l", { streaming: true })
      const oldError = yield* enqueue("l")
      yield* claim("session-a")
      yield* queue.appendChunks("session-a", old.id, ["x"], 1)
      yield* queue.complete("session-a", old.id, { status: 200 }, 1)
      yield* queue.fail("session-a", oldError.id, { message: "boom", status: 500 }, 1)
      yield* TestClock.adjust("7 days")
      yield* TestClock.adjust("1 hour")
      const recent = yield* enqueue("l")
      yield* claim("session-a")
      yield* queue.complete("session-a", recent.id, { status: 200, body: {} }, 1)
      const pending = yield* enqueue("l") // pending: never a retention candidate (it expires first)
      const result = yield* queue.sweep
      assert.strictEqual(result.deleted, 2)
      assert.isTrue(Option.isNone(yield* queue.get(old.id)))
      assert.isTrue(Option.isNone(yield* queue.get(oldError.id)))
      assert.isTrue(Option.isSome(yield* queue.get(recent.id)))
      assert.isTrue(Option.isSome(yield* queue.get(pending.id)))
      const chunks = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM llm_relay.inference_task_chunks`
      assert.strictEqual(chunks[0]!.n, 0)
    }).pipe(Effect.provide(QueueTest)))

  it.effect("direct chat tasks have no agent id; agent tasks keep theirs", () =>
    Effect.gen(function*() {
      yield* serve("session-a", [{ name: "l" }])
      assert.isNull((yield* enqueue("l")).agentId)
      assert.isNull((yield* enqueue("l", { agentId: null })).agentId)
      assert.strictEqual((yield* enqueue("l", { agentId: "agent-9" })).agentId, "agent-9")
    }).pipe(Effect.provide(QueueTest)))
})

describe("enqueueing a task", () => {
  it.effect("an unknown model is ModelNotFound; a public LLM is NotVirtual; nothing is written", () =>
    Effect.gen(function*() {
      yield* insertPublic("gpt-public")
      const unknown = yield* Effect.flip(enqueue("no-such-model"))
      assert.strictEqual(unknown._tag, "ModelNotFound")
      const publicLlm = yield* Effect.flip(enqueue("gpt-public"))
      assert.strictEqual(publicLlm._tag, "NotVirtual")
      assert.strictEqual(yield* countTasks, 0)
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a name whose row has another pool is pinned to that row; the pool name reaches any member", () =>
    Effect.gen(function*() {
      yield* serve("session-1", [{ name: "m-1", pool: "mix" }])
      yield* serve("session-2", [{ name: "m-2", pool: "mix" }])
      const pinned = yield* enqueue("m-2")
      assert.strictEqual(pinned.llmName, "m-2")
      assert.strictEqual((yield* claim("session-1")).length, 0, "sess-1 cannot take a task pinned to m-2")
      assert.deepStrictEqual((yield* claim("session-2")).map((f) => f.taskId), [pinned.id])
      const pooled = yield* enqueue("mix")
      assert.deepStrictEqual((yield* claim("session-1")).map((f) => f.taskId), [pooled.id])
    }).pipe(Effect.provide(QueueTest)))
})

describe("publisher transitions: a lost compare-and-set is a typed error", () => {
  it.effect("posts by a session that does not hold the task are TaskNotHeld", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("holder-session", [{ name: "l", pool: "p" }])
      yield* serve("intruder-session", [{ name: "k", pool: "other" }])
      const task = yield* enqueue("p")
      yield* claim("holder-session")
      for (
        const attempt of [
          queue.ack("intruder-session", task.id, 1),
          queue.appendChunks("intruder-session", task.id, ["x"], 1),
          queue.complete("intruder-session", task.id, { status: 200 }, 1),
          queue.fail("intruder-session", task.id, { message: "m", status: 500 }, 1)
        ]
      ) {
        assert.strictEqual((yield* Effect.flip(attempt))._tag, "TaskNotHeld")
      }
      assert.strictEqual((yield* row(task.id))!.status, "claimed")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a stale attempt is TaskNotHeld even from the same session after a re-dispatch", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      const [first] = yield* claim("session-s")
      yield* queue.revertHeldBy("session-s")
      const [second] = yield* claim("session-s")
      assert.strictEqual(first!.attempt, 1)
      assert.strictEqual(second!.attempt, 2)
      const stale = yield* Effect.flip(queue.complete("session-s", task.id, { status: 200, body: { old: true } }, 1))
      assert.strictEqual(stale._tag, "TaskNotHeld")
      yield* queue.complete("session-s", task.id, { status: 200, body: { fresh: true } }, 2)
      assert.deepStrictEqual(Option.getOrThrow(yield* queue.get(task.id)).responseBody, { fresh: true })
    }).pipe(Effect.provide(QueueTest)))

  it.effect("after cancel every post is TaskCancelled; after another ending TaskAlreadyTerminal; unknown ids TaskNotFound", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const [cancelled, failed] = [yield* enqueue("l"), yield* enqueue("l")]
      yield* claim("session-s")
      yield* queue.cancel(cancelled.id, "client went away")
      assert.strictEqual(
        (yield* Effect.flip(queue.appendChunks("session-s", cancelled.id, ["x"], 1)))._tag,
        "TaskCancelled"
      )
      assert.strictEqual(
        (yield* Effect.flip(queue.complete("session-s", cancelled.id, { status: 200 }, 1)))._tag,
        "TaskCancelled"
      )
      yield* queue.fail("session-s", failed.id, { message: "upstream down", status: 503 }, 1)
      assert.strictEqual(
        (yield* Effect.flip(queue.complete("session-s", failed.id, { status: 200 }, 1)))._tag,
        "TaskAlreadyTerminal"
      )
      assert.strictEqual((yield* Effect.flip(queue.ack("session-s", "no-such-task", 1)))._tag, "TaskNotFound")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a repeated complete by the holder is a no-op success that changes nothing", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.complete("session-s", task.id, { status: 200, body: { n: 1 } }, 1)
      yield* TestClock.adjust("1 second")
      yield* queue.complete("session-s", task.id, { status: 200, body: { n: 2 } }, 1)
      const done = Option.getOrThrow(yield* queue.get(task.id))
      assert.deepStrictEqual(done.responseBody, { n: 1 })
      assert.strictEqual(done.completedAt?.getTime(), 0)
    }).pipe(Effect.provide(QueueTest)))

  it.effect("cancel of a finished task returns it unchanged; cancel of an unknown id is TaskNotFound", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.complete("session-s", task.id, { status: 200, body: { ok: 1 } }, 1)
      const again = yield* queue.cancel(task.id, "too late")
      assert.strictEqual(again.status, "completed")
      assert.isNull(again.errorMessage)
      assert.strictEqual((yield* Effect.flip(queue.cancel("nope", "x")))._tag, "TaskNotFound")
    }).pipe(Effect.provide(QueueTest)))
})

describe("disconnects", () => {
  it.effect("without output a task goes back to pending; with output it ends error PublisherDisconnected", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const [quiet, talking] = [yield* enqueue("l"), yield* enqueue("l", { streaming: true })]
      yield* claim("session-s")
      yield* queue.ack("session-s", quiet.id, 1)
      yield* queue.appendChunks("session-s", talking.id, ["partial"], 1)
      yield* queue.revertHeldBy("session-s")
      const q = (yield* row(quiet.id))!
      assert.strictEqual(q.status, "pending")
      assert.isNull(q.claimedBy)
      assert.strictEqual(q.attempts, 1)
      const t = (yield* row(talking.id))!
      assert.strictEqual(t.status, "error")
      assert.strictEqual(t.errorType, "PublisherDisconnected")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a task whose third dispatch is lost too ends error instead of a fourth dispatch", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      for (const attempt of [1, 2, 3]) {
        const frames = yield* claim("session-s")
        assert.deepStrictEqual(frames.map((f) => f.attempt), [attempt])
        yield* queue.revertHeldBy("session-s")
      }
      const r = (yield* row(task.id))!
      assert.strictEqual(r.status, "error")
      assert.strictEqual(r.errorType, "MaxAttempts")
      assert.strictEqual(r.attempts, 3)
      assert.strictEqual((yield* claim("session-s")).length, 0)
    }).pipe(Effect.provide(QueueTest)))

  it.effect("startup recovery reverts tasks held by sessions of another (dead) broker instance", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const instance = yield* InstanceId
      yield* serve("dead-session", [{ name: "d" }])
      yield* serve("live-session", [{ name: "e" }])
      const [orphan, kept] = [yield* enqueue("d"), yield* enqueue("e")]
      yield* claim("dead-session")
      yield* claim("live-session")
      yield* sql`UPDATE llm_relay.publisher_sessions SET instance_id = 'instance-dead' WHERE id = 'dead-session'`
      assert.strictEqual(instance, "instance-test")
      const reverted = yield* queue.startupRecovery
      assert.strictEqual(reverted, 1)
      assert.strictEqual((yield* row(orphan.id))!.status, "pending")
      assert.strictEqual((yield* row(kept.id))!.status, "claimed")
    }).pipe(Effect.provide(QueueTest)))
})

describe("timeouts under TestClock", () => {
  it.effect("a claim without ack reverts after 30 s, not before", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      yield* claim("session-s")
      yield* TestClock.adjust("29 seconds")
      yield* queue.sweep
      assert.strictEqual((yield* row(task.id))!.status, "claimed")
      yield* TestClock.adjust("2 seconds")
      const result = yield* queue.sweep
      assert.strictEqual(result.reverted, 1)
      assert.strictEqual((yield* row(task.id))!.status, "pending")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("pending for 1 h ends error 'no publisher took the task within 1h'; a waiter gets PublisherOffline", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      const waiter = yield* queue.waitFor(task.id, "2 hours")
      yield* TestClock.adjust("59 minutes")
      yield* queue.sweep
      assert.strictEqual((yield* row(task.id))!.status, "pending")
      yield* TestClock.adjust("2 minutes")
      const result = yield* queue.sweep
      assert.strictEqual(result.expired, 1)
      const r = (yield* row(task.id))!
      assert.strictEqual(r.status, "error")
      assert.strictEqual(r.errorMessage, "no publisher took the task within 1h")
      const outcome = yield* Effect.flip(waiter.result)
      assert.strictEqual(outcome._tag, "PublisherOffline")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("running for 30 min ends error Timeout, and the holder gets a cancel", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const signals = yield* Signals
      yield* serve("session-s", [{ name: "l" }])
      const events = yield* signals.subscribeSession("session-s")
      const task = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.ack("session-s", task.id, 1)
      yield* TestClock.adjust("29 minutes")
      yield* queue.sweep
      assert.strictEqual((yield* row(task.id))!.status, "running")
      yield* TestClock.adjust("2 minutes")
      assert.strictEqual((yield* queue.sweep).timedOut, 1)
      assert.strictEqual((yield* row(task.id))!.errorType, "Timeout")
      const received = yield* drain(events)
      assert.isTrue(received.some((e) => e._tag === "Cancel" && e.taskId === task.id))
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("a wait times out at its deadline and not a moment before; the task is left as it is", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      const waiter = yield* queue.waitFor(task.id, "10 seconds")
      const fiber = yield* Effect.fork(waiter.result)
      yield* TestClock.adjust("9999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) assert.include(String(exit.cause), "Timeout")
      assert.strictEqual((yield* row(task.id))!.status, "pending")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))
})

describe("waiting for a task", () => {
  it.effect("chunks arrive in order, each once, including batches stored before the waiter attached", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l", { streaming: true })
      yield* claim("session-s")
      yield* queue.appendChunks("session-s", task.id, ["c1", "c2"], 1)
      yield* queue.appendChunks("session-s", task.id, ["c3"], 1)
      const waiter = yield* queue.waitFor(task.id, "1 minute")
      const collected = yield* Effect.fork(Stream.runCollect(waiter.chunks))
      yield* queue.appendChunks("session-s", task.id, ["c4", "c5"], 1)
      yield* queue.appendChunks("session-s", task.id, ["c6"], 1)
      yield* queue.complete("session-s", task.id, { status: 200 }, 1)
      assert.deepStrictEqual(Chunk.toReadonlyArray(yield* Fiber.join(collected)), ["c1", "c2", "c3", "c4", "c5", "c6"])
      assert.strictEqual((yield* waiter.result).status, "completed")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("an already finished task resolves at once; cancel is TaskCancelled; fail is UpstreamError with its status", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "l" }])
      const [done, cancelled, failed] = [yield* enqueue("l"), yield* enqueue("l"), yield* enqueue("l")]
      yield* claim("session-s")
      yield* queue.complete("session-s", done.id, { status: 201, body: { ok: true } }, 1)
      assert.strictEqual((yield* (yield* queue.waitFor(done.id, "1 second")).result).responseStatus, 201)

      const cancelWaiter = yield* queue.waitFor(cancelled.id, "1 minute")
      yield* queue.cancel(cancelled.id, "the client closed the connection")
      const c = yield* Effect.flip(cancelWaiter.result)
      assert.strictEqual(c._tag, "TaskCancelled")

      const failWaiter = yield* queue.waitFor(failed.id, "1 minute")
      yield* queue.fail(
        "session-s",
        failed.id,
        { message: "rate limited", status: 429, body: { error: "slow down" } },
        1
      )
      const f = yield* Effect.flip(failWaiter.result)
      assert.strictEqual(f._tag, "UpstreamError")
      if (f._tag === "UpstreamError") {
        assert.strictEqual(f.status, 429)
        assert.strictEqual(f.message, "rate limited")
        assert.deepStrictEqual(f.body, { error: "slow down" })
      }
      assert.strictEqual((yield* Effect.flip(queue.waitFor("missing", "1 second")))._tag, "TaskNotFound")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))
})

describe("a claim race", () => {
  it.live(
    "12 claimers on separate connections take 500 tasks: each exactly once, none left",
    () =>
      Effect.gen(function*() {
        const queue = yield* TaskQueue
        const sql = yield* SqlClient.SqlClient
        const sessions = Array.from({ length: 12 }, (_, i) => `racer-session-${i}`)
        for (const s of sessions) yield* serve(s, [{ name: `row-${s}`, pool: "race", maxConcurrent: 8 }])
        yield* sql`INSERT INTO llm_relay.inference_tasks (id, pool, model, path, request_body, owner_id, created_at, updated_at)
        SELECT 'race-' || g, 'race', 'race', '/v1/chat/completions', '{}'::jsonb, 'o',
               to_timestamp(g / 1000.0), to_timestamp(g / 1000.0)
        FROM generate_series(1, 500) g`
        const taken = yield* Effect.forEach(
          sessions,
          (s) =>
            Effect.gen(function*() {
              const mine: Array<string> = []
              while (true) {
                // small claims so the racers interleave many times
                const frames = yield* queue.claimFor(s)
                for (const f of frames) mine.push(f.taskId)
                if (frames.length === 0) return mine
                yield* Effect.forEach(frames, (f) => queue.complete(s, f.taskId, { status: 200 }, f.attempt), {
                  concurrency: 4
                })
              }
            }),
          { concurrency: "unbounded" }
        )
        const all = taken.flat()
        assert.strictEqual(all.length, 500, "every task claimed")
        assert.strictEqual(new Set(all).size, 500, "no task claimed twice")
        assert.isAbove(taken.filter((t) => t.length > 0).length, 1, "more than one racer won tasks")
        const left = yield* sql<
          { n: number }
        >`SELECT count(*)::int AS n FROM llm_relay.inference_tasks WHERE status <> 'completed'`
        assert.strictEqual(left[0]!.n, 0)
        const attempts = yield* sql<
          { n: number }
        >`SELECT count(*)::int AS n FROM llm_relay.inference_tasks WHERE attempts <> 1`
        assert.strictEqual(attempts[0]!.n, 0, "every task dispatched exactly once")
      }).pipe(Effect.provide(QueueTest)),
    60_000
  )
})
