/**
 * Provider health, hand-backs and unresponsive sessions (PROTOCOL.md v1.1
 * "Publisher routes"): heartbeat health per row, `POST error` with `retry`,
 * unacknowledged claims re-sent on a new stream, and a claim-ack timeout
 * closing the session. Real PostgreSQL, the broker's session actors,
 * TestClock for every timeout.
 */
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Option, Queue, Scope, TestClock } from "effect"
import * as Broker from "../../src/Broker.js"
import type { Frame, TaskFrame } from "../../src/domain/Frames.js"
import { Registry } from "../../src/registry/Registry.js"
import { Sessions } from "../../src/sessions/Sessions.js"
import { Sweeper } from "../../src/sweeper/Sweeper.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { ConfigTest } from "../support/layers.js"
import { provider } from "../support/registry.js"
import { call, nextTask, openStream, settle } from "../support/sessions.js"
import { live, row } from "../support/tasks.js"
import * as TestDatabase from "../support/TestDatabase.js"

const Services = Sweeper.layerManual.pipe(
  Layer.provideMerge(Broker.services),
  Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest))
)

/** No task frame arrives for a while. */
const noTask = (frames: Queue.Queue<Frame>) =>
  Effect.gen(function*() {
    yield* settle
    const all = yield* Queue.takeAll(frames)
    assert.deepStrictEqual([...all].filter((f) => f._tag === "task"), [], "no task frame")
  })

const enqueue = (model: string) =>
  Effect.flatMap(TaskQueue, (q) =>
    q.enqueue({
      model,
      path: "/v1/chat/completions",
      streaming: false,
      requestBody: { model, messages: [{ role: "user", content: "hi" }] },
      ownerId: "client-1"
    }))

const llm = (name: string) => Effect.flatMap(Registry, (r) => Effect.map(r.findRow(name), Option.getOrThrow))

const unhealthy = (name: string, reason = "connection refused") => [{ name, healthy: false, reason }]
const healthy = (name: string) => [{ name, healthy: true, reason: null }]

const handedBackBy = (id: string) =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) =>
      sql<{ handedBackBy: string | null }>`SELECT handed_back_by FROM llm_relay.inference_tasks WHERE id = ${id}`.pipe(
        Effect.map((rows) => rows[0]!.handedBackBy),
        Effect.orDie
      )
  )

describe("provider health in heartbeats", () => {
  it.scoped("an unhealthy row stays active but takes no task; healthy again, the queued task is dispatched", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sessions = yield* Sessions
      yield* registry.register("pub", { sessionId: "sess-sick", providers: [provider("sick"), provider("other")] })
      const { frames } = yield* openStream("sess-sick", yield* Effect.scope)
      yield* sessions.heartbeat("sess-sick", [...unhealthy("sick"), {
        name: "no-such-provider",
        healthy: false,
        reason: "x"
      }])
      const sick = yield* llm("sick")
      assert.strictEqual(sick.status, "active")
      assert.isFalse(sick.healthy)
      assert.strictEqual(sick.healthReason, "connection refused")
      assert.isNotNull(sick.downSince, "down from the first unhealthy report")
      assert.isTrue((yield* llm("other")).healthy, "a provider left out keeps its health")
      assert.isFalse(Option.getOrThrow(yield* registry.findByName("sick")).healthy, "the Llm view shows it")

      const task = yield* enqueue("sick")
      yield* noTask(frames)
      assert.strictEqual((yield* row(task.id))!.status, "pending")
      // a heartbeat without a body changes nothing
      yield* sessions.heartbeat("sess-sick")
      assert.isFalse((yield* llm("sick")).healthy)

      yield* sessions.heartbeat("sess-sick", healthy("sick"))
      const frame = yield* nextTask(frames)
      assert.strictEqual(frame.taskId, task.id)
      const back = yield* llm("sick")
      assert.isTrue(back.healthy)
      assert.isNull(back.healthReason)
      assert.isNull(back.downSince, "online again")
    }).pipe(Effect.provide(Services)))

  it.scoped("a pool whose only member is unhealthy is reconnecting: a call waits the grace, then 503", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sessions = yield* Sessions
      yield* registry.register("pub", { sessionId: "sess-down", providers: [provider("down")] })
      const { frames } = yield* openStream("sess-down", yield* Effect.scope)
      yield* sessions.heartbeat("sess-down", unhealthy("down"))
      const fiber = yield* Effect.fork(call("down"))
      yield* settle
      yield* TestClock.adjust("14 seconds")
      yield* settle
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)), "still within the grace")
      yield* noTask(frames)
      yield* TestClock.adjust("1 second")
      const answer = yield* live(Fiber.join(fiber), "the grace to run out")
      assert.strictEqual(answer._tag === "Failed" ? answer.error._tag : answer._tag, "PublisherOffline")
    }).pipe(Effect.provide(Services)))

  it.scoped("a member healthy again within the grace serves the call waiting for it", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sessions = yield* Sessions
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-flaky", providers: [provider("flaky")] })
      const { frames } = yield* openStream("sess-flaky", yield* Effect.scope)
      yield* sessions.heartbeat("sess-flaky", unhealthy("flaky"))
      const fiber = yield* Effect.fork(call("flaky"))
      yield* TestClock.adjust("10 seconds")
      yield* noTask(frames)
      yield* sessions.heartbeat("sess-flaky", healthy("flaky"))
      const frame = yield* nextTask(frames)
      yield* queue.complete("sess-flaky", frame.taskId, { status: 200, body: { ok: 1 } }, frame.attempt)
      const answer = yield* live(Fiber.join(fiber), "the answer")
      assert.strictEqual(answer._tag, "Whole")
    }).pipe(Effect.provide(Services)))
})

describe("POST error with retry (hand-back)", () => {
  it.scoped("goes back to the queue and to another member, counting as a dispatch", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-hb-a", providers: [provider("hb-a", { pool: "hb" })] })
      const a = yield* openStream("sess-hb-a", yield* Effect.scope)
      const task = yield* enqueue("hb")
      const first = yield* nextTask(a.frames)
      yield* registry.register("pub", { sessionId: "sess-hb-b", providers: [provider("hb-b", { pool: "hb" })] })
      const b = yield* openStream("sess-hb-b", yield* Effect.scope)
      yield* noTask(b.frames)
      yield* queue.fail("sess-hb-a", task.id, { message: "ECONNREFUSED", status: 502, retry: true }, first.attempt)
      const second = yield* nextTask(b.frames)
      assert.strictEqual(second.taskId, task.id)
      assert.strictEqual(second.attempt, 2)
      assert.isNull(yield* handedBackBy(task.id), "cleared by the claim")
      yield* noTask(a.frames)
      // the first attempt is over: its late posts are stale
      const late = yield* Effect.flip(queue.ack("sess-hb-a", task.id, first.attempt))
      assert.strictEqual(late._tag, "TaskNotHeld")
    }).pipe(Effect.provide(Services)))

  it.scoped("with no other member online, the same session takes it again", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-alone", providers: [provider("alone")] })
      const { frames } = yield* openStream("sess-alone", yield* Effect.scope)
      const task = yield* enqueue("alone")
      const first = yield* nextTask(frames)
      yield* queue.fail("sess-alone", task.id, { message: "refused", status: 502, retry: true }, first.attempt)
      const again = yield* nextTask(frames)
      assert.deepStrictEqual([again.taskId, again.attempt], [task.id, 2])
    }).pipe(Effect.provide(Services)))

  it.scoped("at the attempt limit the task ends error UpstreamError with the last message", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-limit", providers: [provider("limit")] })
      const { frames } = yield* openStream("sess-limit", yield* Effect.scope)
      const fiber = yield* Effect.fork(call("limit"))
      for (const attempt of [1, 2, 3]) {
        const frame = yield* nextTask(frames)
        assert.strictEqual(frame.attempt, attempt)
        yield* queue.fail(
          "sess-limit",
          frame.taskId,
          { message: `refused #${attempt}`, status: 502, retry: true },
          frame.attempt
        )
      }
      const answer = yield* live(Fiber.join(fiber), "the call's answer")
      if (answer._tag !== "Failed" || answer.error._tag !== "UpstreamError") {
        return assert.fail(`expected UpstreamError, got ${answer._tag}`)
      }
      assert.strictEqual(answer.error.message, "refused #3")
      assert.strictEqual(answer.error.status, 502)
      yield* noTask(frames)
    }).pipe(Effect.provide(Services)))

  it.scoped("after output was sent, retry is ignored: a normal error", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-late", providers: [provider("late")] })
      const { frames } = yield* openStream("sess-late", yield* Effect.scope)
      const task = yield* enqueue("late")
      const frame = yield* nextTask(frames)
      yield* queue.appendChunks("sess-late", task.id, ["{}"], frame.attempt)
      yield* queue.fail("sess-late", task.id, { message: "broke", status: 502, retry: true }, frame.attempt)
      const stored = (yield* row(task.id))!
      assert.deepStrictEqual([stored.status, stored.errorType, stored.attempts], ["error", "UpstreamError", 1])
    }).pipe(Effect.provide(Services)))
})

describe("unacknowledged claims", () => {
  it.scoped("a stream replacing another first re-sends the claims not acknowledged, same attempt", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-resend", providers: [provider("resend")] })
      const first = yield* openStream("sess-resend", yield* Scope.make())
      const [lost, acked] = [yield* enqueue("resend"), yield* enqueue("resend")]
      const frames = [yield* nextTask(first.frames), yield* nextTask(first.frames)]
      const ackedFrame = frames.find((f) => f.taskId === acked.id)!
      yield* queue.ack("sess-resend", acked.id, ackedFrame.attempt)
      const second = yield* openStream("sess-resend", yield* Effect.scope)
      yield* live(Fiber.join(first.fiber), "the first stream to end")
      const resent: TaskFrame = yield* nextTask(second.frames)
      assert.deepStrictEqual(resent, frames.find((f) => f.taskId === lost.id))
      yield* noTask(second.frames)
      assert.strictEqual((yield* row(lost.id))!.attempts, 1, "not a new dispatch")
    }).pipe(Effect.provide(Services)))

  it.scoped("a claim not acknowledged within 30 s closes its session as lost", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sessions = yield* Sessions
      const sweeper = yield* Sweeper
      yield* registry.register("pub", { sessionId: "sess-halfopen", providers: [provider("halfopen")] })
      const { fiber, frames } = yield* openStream("sess-halfopen", yield* Effect.scope)
      const task = yield* enqueue("halfopen")
      yield* nextTask(frames)
      yield* TestClock.adjust("29 seconds")
      const early = yield* sweeper.sweepOnce
      assert.deepStrictEqual(early.tasks.unresponsive, [])
      assert.isTrue(yield* sessions.isOpen("sess-halfopen"))
      yield* TestClock.adjust("2 seconds")
      const pass = yield* sweeper.sweepOnce
      assert.deepStrictEqual(pass.tasks.unresponsive, ["sess-halfopen"])
      assert.isFalse(yield* sessions.isOpen("sess-halfopen"))
      yield* live(Fiber.join(fiber), "the stream to end")
      const stored = yield* llm("halfopen")
      assert.strictEqual(stored.status, "inactive")
      assert.isNotNull(stored.downSince, "lost, not a goodbye: its pool is reconnecting")
      assert.strictEqual((yield* row(task.id))!.status, "pending")
    }).pipe(Effect.provide(Services)))
})
