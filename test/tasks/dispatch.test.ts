/**
 * Dispatch: what `claimFor` takes for a session (each row's free capacity,
 * its pool or its pinned tasks, never for an inactive row) and who is told
 * when work appears or a holder must let a task go.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { Registry } from "../../src/registry/Registry.js"
import type { SessionEvent } from "../../src/signals/Signals.js"
import { Signals } from "../../src/signals/Signals.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { claim, drain, enqueue, QueueTest, row, serve } from "../support/tasks.js"

const ids = (frames: ReadonlyArray<{ readonly taskId: string }>) => frames.map((f) => f.taskId)

describe("claiming tasks for a session", () => {
  it.effect("takes no more than each row's free capacity, and more once a held task ends", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      yield* serve("session-s", [{ name: "small", pool: "p", maxConcurrent: 2 }])
      const tasks = [
        yield* enqueue("p"),
        yield* enqueue("p"),
        yield* enqueue("p"),
        yield* enqueue("p"),
        yield* enqueue("p")
      ]
      const first = yield* claim("session-s")
      assert.deepStrictEqual(ids(first), [tasks[0]!.id, tasks[1]!.id])
      assert.deepStrictEqual(yield* claim("session-s"), [], "full: nothing more")
      yield* queue.complete("session-s", tasks[0]!.id, { status: 200 }, 1)
      assert.deepStrictEqual(ids(yield* claim("session-s")), [tasks[2]!.id], "one slot freed, one task")
      yield* queue.cancel(tasks[1]!.id, "not needed")
      yield* queue.fail("session-s", tasks[2]!.id, { message: "x", status: 500 }, 1)
      assert.deepStrictEqual(ids(yield* claim("session-s")), [tasks[3]!.id, tasks[4]!.id])
    }).pipe(Effect.provide(QueueTest)))

  it.effect("fills every row of a session from its own pool, each up to its own capacity", () =>
    Effect.gen(function*() {
      yield* serve("session-s", [
        { name: "row-a", pool: "pool-a", maxConcurrent: 1 },
        { name: "row-b", pool: "pool-b", maxConcurrent: 3 }
      ])
      const a = [yield* enqueue("pool-a"), yield* enqueue("pool-a")]
      const b = [yield* enqueue("pool-b"), yield* enqueue("pool-b")]
      const frames = yield* claim("session-s")
      assert.sameMembers(ids(frames), [a[0]!.id, b[0]!.id, b[1]!.id])
      for (const f of frames) {
        assert.strictEqual(f.llmName, f.taskId === a[0]!.id ? "row-a" : "row-b", "the frame names the row that took it")
        assert.strictEqual(f.attempt, 1)
      }
      assert.strictEqual((yield* row(a[1]!.id))!.status, "pending", "row-a is full")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("leaves tasks held by another session alone, and takes only what is still pending", () =>
    Effect.gen(function*() {
      yield* serve("session-1", [{ name: "r1", pool: "shared", maxConcurrent: 2 }])
      yield* serve("session-2", [{ name: "r2", pool: "shared", maxConcurrent: 10 }])
      const tasks = [yield* enqueue("shared"), yield* enqueue("shared"), yield* enqueue("shared")]
      assert.deepStrictEqual(ids(yield* claim("session-1")), [tasks[0]!.id, tasks[1]!.id])
      assert.deepStrictEqual(ids(yield* claim("session-2")), [tasks[2]!.id])
      assert.strictEqual((yield* row(tasks[0]!.id))!.claimedBy, "session-1")
    }).pipe(Effect.provide(QueueTest)))

  it.effect("an inactive row claims nothing; bound again, it does", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* serve("session-s", [{ name: "l" }])
      const task = yield* enqueue("l")
      yield* registry.unbindSession("session-s", false)
      assert.deepStrictEqual(yield* claim("session-s"), [])
      assert.strictEqual((yield* row(task.id))!.status, "pending")
      yield* registry.bindSession("session-s")
      assert.deepStrictEqual(ids(yield* claim("session-s")), [task.id])
    }).pipe(Effect.provide(QueueTest)))

  it.effect("an unknown session claims nothing", () =>
    Effect.gen(function*() {
      yield* serve("session-s", [{ name: "l" }])
      yield* enqueue("l")
      assert.deepStrictEqual(yield* claim("no-such-session"), [])
    }).pipe(Effect.provide(QueueTest)))

  it.effect("a task's frame carries what the publisher needs: attempt, row, model, path, streaming, body", () =>
    Effect.gen(function*() {
      yield* serve("session-s", [{ name: "vllm-1", pool: "qwen" }])
      const body = { model: "qwen", messages: [{ role: "user", content: "hi" }], max_tokens: 5 }
      const task = yield* enqueue("qwen", { streaming: true, body })
      const [frame] = yield* claim("session-s")
      assert.deepStrictEqual(frame, {
        _tag: "task",
        kind: "infer",
        taskId: task.id,
        attempt: 1,
        llmName: "vllm-1",
        model: "model-of-vllm-1",
        path: "/v1/chat/completions",
        streaming: true,
        body
      })
    }).pipe(Effect.provide(QueueTest)))
})

describe("who is told", () => {
  it.effect("enqueue and a revert to pending wake the task's pool; a revert to error does not", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const signals = yield* Signals
      yield* serve("session-s", [{ name: "l", pool: "p" }])
      const wakes = yield* signals.subscribePool("p")
      const quiet = yield* enqueue("p")
      assert.isAbove((yield* drain(wakes)).length, 0, "enqueue wakes the pool")
      yield* claim("session-s")
      assert.strictEqual((yield* drain(wakes)).length, 0, "a claim wakes nobody")
      yield* queue.revertHeldBy("session-s")
      assert.isAbove((yield* drain(wakes)).length, 0, "the reverted task is work again")
      yield* claim("session-s")
      yield* queue.appendChunks("session-s", quiet.id, ["started"], 2)
      yield* queue.revertHeldBy("session-s")
      assert.strictEqual((yield* drain(wakes)).length, 0, "a task ended by the disconnect is no work for anyone")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("cancelling a held task tells its holder (cancel, then freed); a pending one tells no session", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const signals = yield* Signals
      yield* serve("session-s", [{ name: "l", maxConcurrent: 1 }])
      const events = yield* signals.subscribeSession("session-s")
      const held = yield* enqueue("l")
      const waiting = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.cancel(waiting.id, "never mind")
      assert.deepStrictEqual(yield* drain(events), [])
      yield* queue.cancel(held.id, "the client closed the connection")
      const expected: ReadonlyArray<SessionEvent> = [
        { _tag: "Cancel", taskId: held.id, reason: "the client closed the connection" },
        { _tag: "Freed", llmName: "l" }
      ]
      assert.deepStrictEqual(yield* drain(events), expected)
      yield* queue.cancel(held.id, "again")
      assert.deepStrictEqual(yield* drain(events), [], "cancelling a finished task tells no one")
      assert.strictEqual(Option.getOrThrow(yield* queue.get(held.id)).errorMessage, "the client closed the connection")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("a result or an error frees the holder's slot (freed, with its row); an ack or chunks do not", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const signals = yield* Signals
      yield* serve("session-s", [{ name: "l" }])
      const events = yield* signals.subscribeSession("session-s")
      const a = yield* enqueue("l")
      const b = yield* enqueue("l")
      yield* claim("session-s")
      yield* queue.ack("session-s", a.id, 1)
      yield* queue.appendChunks("session-s", a.id, ["x"], 1)
      assert.deepStrictEqual(yield* drain(events), [])
      yield* queue.complete("session-s", a.id, { status: 200 }, 1)
      yield* queue.fail("session-s", b.id, { message: "m", status: 500 }, 1)
      const freed: ReadonlyArray<SessionEvent> = [{ _tag: "Freed", llmName: "l" }, { _tag: "Freed", llmName: "l" }]
      assert.deepStrictEqual(yield* drain(events), freed, "naming the row that held the task")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))
})
