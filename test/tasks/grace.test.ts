/**
 * Calls under publisher churn (PROTOCOL.md client routes): the reconnect
 * grace, a queued call whose pool goes away, and queued streams. Real
 * PostgreSQL, the session actors of the broker, TestClock for every wait.
 */
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Layer, Option, Queue, Scope, Stream, TestClock } from "effect"
import * as Broker from "../../src/Broker.js"
import { Registry } from "../../src/registry/Registry.js"
import { Sessions } from "../../src/sessions/Sessions.js"
import { type Answer, type Output, QUEUED } from "../../src/tasks/Relay.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { ConfigTest } from "../support/layers.js"
import { provider } from "../support/registry.js"
import { call, eventually, nextTask, openStream, settle } from "../support/sessions.js"
import { countTasks, live, row } from "../support/tasks.js"
import * as TestDatabase from "../support/TestDatabase.js"

const Services = Broker.services.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))

const failedWith = (answer: Answer) => (answer._tag === "Failed" ? answer.error._tag : answer._tag)

const pendingTasks = Effect.flatMap(TaskQueue, (q) => q.findPendingForPools(["a", "gone", "busy", "back", "slow"]))

describe("reconnect grace", () => {
  it.scoped("registered but never streaming: a call queues for the grace (15 s), then 503 with its task cancelled", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("pub", { sessionId: "sess-aaaa", providers: [provider("a")] })
      const fiber = yield* Effect.fork(call("a"))
      yield* eventually(Effect.map(pendingTasks, (t) => t.length === 1), "the call's task to be queued")
      const taskId = (yield* pendingTasks)[0]!.id
      yield* TestClock.adjust("14 seconds")
      yield* settle
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)), "still within the grace")
      yield* TestClock.adjust("1 second")
      const answer = yield* live(Fiber.join(fiber), "the grace to run out")
      assert.strictEqual(failedWith(answer), "PublisherOffline")
      assert.strictEqual((yield* row(taskId)).status, "cancelled")
    }).pipe(Effect.provide(Services)))

  it.scoped("a stream lost without goodbye: a call waits, and the publisher coming back serves it", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-back-1", providers: [provider("back")] })
      const first = yield* Scope.make()
      yield* openStream("sess-back-1", first)
      yield* Scope.close(first, Exit.void)
      yield* eventually(
        Effect.map(registry.findByName("back"), (r) => Option.getOrThrow(r).status === "inactive"),
        "the lost stream to unbind"
      )
      const fiber = yield* Effect.fork(call("back"))
      yield* eventually(Effect.map(pendingTasks, (t) => t.length === 1), "the call to queue")
      // back within the grace, no clock moved: the claim wakes the call
      const { frames } = yield* openStream("sess-back-1", yield* Effect.scope)
      const frame = yield* nextTask(frames)
      if (frame._tag !== "task") return assert.fail("expected a task")
      yield* queue.complete("sess-back-1", frame.taskId, { status: 200, body: { answer: 42 } }, frame.attempt)
      const answer = yield* live(Fiber.join(fiber), "the answer")
      assert.strictEqual(answer._tag, "Whole")
      if (answer._tag === "Whole") assert.deepStrictEqual(answer.task.responseBody, { answer: 42 })
    }).pipe(Effect.provide(Services)))

  it.scoped("after a goodbye: 503 at once, and no task is made", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sessions = yield* Sessions
      yield* registry.register("pub", { sessionId: "sess-gone-1", providers: [provider("gone")] })
      yield* openStream("sess-gone-1", yield* Effect.scope)
      yield* sessions.close("sess-gone-1", "goodbye")
      const before = yield* countTasks
      const error = yield* Effect.flip(call("gone"))
      assert.strictEqual(error._tag, "PublisherOffline")
      assert.strictEqual(yield* countTasks, before)
    }).pipe(Effect.provide(Services)))

  it.scoped("calls queued behind busy publishers that leave get 503 once the grace runs out, not the pending timeout", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sessions = yield* Sessions
      yield* registry.register("pub", {
        sessionId: "sess-busy",
        providers: [provider("busy", { maxConcurrent: 1 })]
      })
      const { frames } = yield* openStream("sess-busy", yield* Effect.scope)
      const running = yield* Effect.fork(call("busy"))
      yield* nextTask(frames)
      const queued = yield* Effect.fork(call("busy"))
      yield* eventually(Effect.map(pendingTasks, (t) => t.length === 1), "the second call to queue")
      yield* sessions.close("sess-busy", "goodbye")
      // the running task had no output: it went back to the queue, and both calls wait
      yield* eventually(Effect.map(pendingTasks, (t) => t.length === 2), "the held task to revert")
      yield* TestClock.adjust("14 seconds")
      yield* settle
      assert.isTrue(Option.isNone(yield* Fiber.poll(queued)), "the grace counts from the moment the pool went offline")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(failedWith(yield* live(Fiber.join(queued), "the queued call")), "PublisherOffline")
      assert.strictEqual(failedWith(yield* live(Fiber.join(running), "the reverted call")), "PublisherOffline")
    }).pipe(Effect.provide(Services)))

  it.scoped("X-Relay-Max-Wait longer than the grace: the call waits that long", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("pub", { sessionId: "sess-slow", providers: [provider("slow")] })
      const fiber = yield* Effect.fork(call("slow", { maxWaitSeconds: 40 }))
      yield* eventually(Effect.map(pendingTasks, (t) => t.length === 1), "the call to queue")
      yield* TestClock.adjust("15 seconds")
      yield* settle
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)), "past the grace, within the max wait")
      yield* TestClock.adjust("25 seconds")
      assert.strictEqual(failedWith(yield* live(Fiber.join(fiber), "the max wait to run out")), "PublisherOffline")
    }).pipe(Effect.provide(Services)))
})

/** Collects a streamed answer's items into a queue as they come. */
const collect = (answer: Answer) =>
  Effect.gen(function*() {
    if (answer._tag !== "Streaming") return assert.fail(`expected a stream, got ${answer._tag}`)
    const items = yield* Queue.unbounded<Output | { readonly failed: string } | "end">()
    yield* Effect.fork(
      answer.chunks.pipe(
        Stream.runForEach((item) => Queue.offer(items, item)),
        Effect.matchEffect({
          onFailure: (e) => Queue.offer(items, { failed: e._tag }),
          onSuccess: () => Queue.offer(items, "end")
        })
      )
    )
    return items
  })

const takeN = <A>(queue: Queue.Queue<A>, n: number) =>
  live(Effect.map(Queue.takeBetween(queue, n, n), Chunk.toReadonlyArray), `${n} stream item(s)`)

describe("queued streams", () => {
  it.scoped("headers after 3 s in the queue, `queued` marks every keepalive interval, then the output", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-queued", providers: [provider("q", { maxConcurrent: 1 })] })
      const { frames } = yield* openStream("sess-queued", yield* Effect.scope)
      yield* Effect.fork(call("q"))
      const blocking = yield* nextTask(frames)
      const fiber = yield* Effect.fork(call("q", { stream: true }))
      yield* settle
      yield* TestClock.adjust("2900 millis")
      yield* settle
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)), "no headers before 3 s")
      yield* TestClock.adjust("100 millis")
      const items = yield* collect(yield* live(Fiber.join(fiber), "the headers"))
      assert.deepStrictEqual(yield* takeN(items, 1), [QUEUED])
      yield* TestClock.adjust("15 seconds")
      assert.deepStrictEqual(yield* takeN(items, 1), [QUEUED])
      // the first task ends: the stream's task is claimed and its output flows
      if (blocking._tag !== "task") return assert.fail("expected a task")
      yield* queue.complete("sess-queued", blocking.taskId, { status: 200, body: {} }, blocking.attempt)
      const frame = yield* nextTask(frames)
      if (frame._tag !== "task") return assert.fail("expected a task")
      yield* queue.appendChunks("sess-queued", frame.taskId, ["one", "two"], frame.attempt)
      assert.deepStrictEqual(yield* takeN(items, 2), ["one", "two"])
      yield* queue.complete("sess-queued", frame.taskId, { status: 200 }, frame.attempt)
      assert.deepStrictEqual(yield* takeN(items, 1), ["end"])
      yield* TestClock.adjust("15 seconds")
      yield* settle
      assert.strictEqual(yield* Queue.size(items), 0, "no mark after the output started")
    }).pipe(Effect.provide(Services)))

  it.scoped("an answer that fails before the headers keeps its status; after them it is the in-band error", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-failing", providers: [provider("f", { maxConcurrent: 1 })] })
      const { frames } = yield* openStream("sess-failing", yield* Effect.scope)
      const early = yield* Effect.fork(call("f", { stream: true }))
      const first = yield* nextTask(frames)
      if (first._tag !== "task") return assert.fail("expected a task")
      yield* queue.fail(
        "sess-failing",
        first.taskId,
        { message: "slow down", status: 429, body: { e: 1 } },
        first.attempt
      )
      const answer = yield* live(Fiber.join(early), "the early failure")
      assert.strictEqual(answer._tag, "Failed")
      if (answer._tag === "Failed" && answer.error._tag === "UpstreamError") {
        assert.strictEqual(answer.error.status, 429)
      } else {
        assert.fail(`expected an UpstreamError, got ${failedWith(answer)}`)
      }

      const late = yield* Effect.fork(call("f", { stream: true }))
      const second = yield* nextTask(frames)
      if (second._tag !== "task") return assert.fail("expected a task")
      yield* TestClock.adjust("3 seconds")
      const items = yield* collect(yield* live(Fiber.join(late), "the headers"))
      assert.deepStrictEqual(yield* takeN(items, 1), [QUEUED])
      yield* queue.fail("sess-failing", second.taskId, { message: "slow down", status: 429 }, second.attempt)
      assert.deepStrictEqual(yield* takeN(items, 1), [{ failed: "UpstreamError" }])
    }).pipe(Effect.provide(Services)))

  it.scoped("a stream whose output starts within 3 s gets no mark", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-fast", providers: [provider("fast")] })
      const { frames } = yield* openStream("sess-fast", yield* Effect.scope)
      const fiber = yield* Effect.fork(call("fast", { stream: true }))
      const frame = yield* nextTask(frames)
      if (frame._tag !== "task") return assert.fail("expected a task")
      yield* queue.appendChunks("sess-fast", frame.taskId, ["x"], frame.attempt)
      const items = yield* collect(yield* live(Fiber.join(fiber), "the first output"))
      yield* queue.complete("sess-fast", frame.taskId, { status: 200 }, frame.attempt)
      assert.deepStrictEqual(yield* takeN(items, 2), ["x", "end"])
    }).pipe(Effect.provide(Services)))
})
