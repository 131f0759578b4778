/**
 * SessionActors and the scheduled sweep, against real PostgreSQL with
 * TestClock driving every timeout.
 */
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Duration, Effect, Fiber, Layer, Option, Queue, Scope, Stream, TestClock, TestServices } from "effect"
import * as Broker from "../../src/Broker.js"
import type { Frame } from "../../src/domain/Frames.js"
import { Registry } from "../../src/registry/Registry.js"
import { Sessions } from "../../src/sessions/Sessions.js"
import { Sweeper } from "../../src/sweeper/Sweeper.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { ConfigTest } from "../support/layers.js"
import { provider } from "../support/registry.js"
import * as TestDatabase from "../support/TestDatabase.js"

const Base = Broker.services.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))
/** The broker's services with `sweepOnce` on demand. */
const Manual = Sweeper.layerManual.pipe(Layer.provideMerge(Base))
/** The broker's services with the sweep fiber running on its schedule. */
const Scheduled = Sweeper.layer.pipe(Layer.provideMerge(Base))

/** Real time passes (the sweep and the actor do real SQL) until `check` holds, or fails after ~3 s. */
const eventually = <E, R>(check: Effect.Effect<boolean, E, R>, what: string, attempts = 150) =>
  Effect.gen(function*() {
    for (let i = 0; i < attempts; i++) {
      if (yield* check) return
      yield* TestServices.provideLive(Effect.sleep("20 millis"))
    }
    return assert.fail(`timed out waiting for ${what}`)
  })

/**
 * For the scheduled sweep, whose fiber is not the test's (TestClock does not
 * wait for it to settle): moves the clock by `step` until `check` holds. A
 * pass whose SQL is still running when the clock moves schedules its next
 * sleep from the later time; one big move could then leave it asleep.
 */
const eventuallyAdvancing = <E, R>(
  step: Duration.DurationInput,
  check: Effect.Effect<boolean, E, R>,
  what: string,
  steps = 150
) => eventually(Effect.zipRight(TestClock.adjust(step), check), what, steps)

/** Lets real time pass, for asserting that something did NOT happen. */
const settle = TestServices.provideLive(Effect.sleep("300 millis"))

/** Opens a session's stream in `scope` and collects its frames into a queue. */
const openStream = (sessionId: string, scope: Scope.Scope) =>
  Effect.gen(function*() {
    const sessions = yield* Sessions
    const frames = yield* Queue.unbounded<Frame>()
    const stream = yield* Scope.extend(sessions.open(sessionId), scope)
    const fiber = yield* Effect.fork(Stream.runForEach(stream, (frame) => Queue.offer(frames, frame)))
    return { frames, fiber }
  })

const status = (name: string) =>
  Effect.flatMap(Registry, (r) => Effect.map(r.findByName(name), (o) => Option.getOrThrow(o).status))

const taskStatus = (id: string) =>
  Effect.flatMap(TaskQueue, (q) => Effect.map(q.get(id), (o) => Option.getOrThrow(o).status))

const enqueue = (model: string, content = "hi") =>
  Effect.flatMap(TaskQueue, (q) =>
    q.enqueue({
      model,
      path: "/v1/chat/completions",
      streaming: false,
      requestBody: { model, messages: [{ role: "user", content }] },
      ownerId: "client-1"
    }))

const taskFrames = (frames: Queue.Queue<Frame>) =>
  Effect.map(Queue.takeAll(frames), (all) => Chunk.toReadonlyArray(all).filter((f) => f._tag === "task"))

describe("SessionActor", () => {
  it.scoped("heartbeat silence for 90 s unbinds a session whose stream is still open; a heartbeat keeps it", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const sweeper = yield* Sweeper
      const sessions = yield* Sessions
      yield* registry.register("pub", { sessionId: "sess-silent", providers: [provider("silent")] })
      const scope = yield* Scope.make()
      const { fiber } = yield* openStream("sess-silent", scope)
      const task = yield* enqueue("silent")
      yield* eventually(Effect.map(taskStatus(task.id), (s) => s === "claimed"), "the actor to claim the task")
      // acknowledged: an unacknowledged claim would close the session after 30 s
      yield* (yield* TaskQueue).ack("sess-silent", task.id, 1)

      yield* TestClock.adjust("60 seconds")
      yield* registry.heartbeat("sess-silent")
      yield* TestClock.adjust("60 seconds") // 120 s since registering, 60 s since the heartbeat
      yield* sweeper.sweepOnce
      assert.strictEqual(yield* status("silent"), "active")
      assert.isTrue(yield* sessions.isOpen("sess-silent"))

      yield* TestClock.adjust("31 seconds") // 91 s of silence
      yield* sweeper.sweepOnce
      assert.strictEqual(yield* status("silent"), "inactive")
      assert.isFalse(yield* sessions.isOpen("sess-silent"))
      // the stream ended, and the task it held went back to the queue
      yield* Fiber.join(fiber)
      assert.strictEqual(yield* taskStatus(task.id), "pending")
    }).pipe(Effect.provide(Manual)))

  it.scoped("claims no more than a row's maxConcurrent, and claims again when one finishes", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-cap", providers: [provider("cap", { maxConcurrent: 2 })] })
      const tasks = yield* Effect.forEach([1, 2, 3, 4, 5], (i) => enqueue("cap", `q${i}`))
      const { frames } = yield* openStream("sess-cap", yield* Scope.make())
      yield* eventually(Effect.map(Queue.size(frames), (n) => n >= 2), "two task frames")
      yield* settle
      const first = yield* taskFrames(frames)
      assert.strictEqual(first.length, 2)
      // oldest first
      assert.deepStrictEqual(first.map((f) => f.taskId), [tasks[0]!.id, tasks[1]!.id])
      const done = first[0]!
      if (done._tag !== "task") return assert.fail("expected a task frame")
      yield* queue.complete("sess-cap", done.taskId, { status: 200, body: { ok: true } }, done.attempt)
      yield* eventually(Effect.map(Queue.size(frames), (n) => n >= 1), "a third task frame")
      yield* settle
      const next = yield* taskFrames(frames)
      assert.deepStrictEqual(next.map((f) => f.taskId), [tasks[2]!.id])
    }).pipe(Effect.provide(Manual)))

  it.scoped("two rows of one session in one pool each take a task at once, and one more when one finishes", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", {
        sessionId: "sess-twins",
        providers: [
          provider("twin-a", { maxConcurrent: 1, pool: "twins" }),
          provider("twin-b", { maxConcurrent: 1, pool: "twins" })
        ]
      })
      // Queued before the stream opens: one claim statement serves both rows,
      // and both pick the oldest task; one row gets it, and the actor must look
      // again at once for the other (no signal will come).
      const tasks = yield* Effect.forEach([1, 2, 3], (i) => enqueue("twins", `q${i}`))
      const { frames } = yield* openStream("sess-twins", yield* Scope.make())
      // No clock moves: the slow poll never fires, so only the claims the signals caused count.
      yield* eventually(Effect.map(Queue.size(frames), (n) => n >= 2), "a task frame for each row")
      yield* settle
      const first = yield* taskFrames(frames)
      assert.strictEqual(first.length, 2)
      assert.deepStrictEqual(first.map((f) => f.taskId).sort(), [tasks[0]!.id, tasks[1]!.id].sort())
      assert.deepStrictEqual(first.map((f) => (f._tag === "task" ? f.llmName : "")).sort(), ["twin-a", "twin-b"])
      const done = first[0]!
      if (done._tag !== "task") return assert.fail("expected a task frame")
      yield* queue.complete("sess-twins", done.taskId, { status: 200, body: { ok: true } }, done.attempt)
      yield* eventually(Effect.map(Queue.size(frames), (n) => n >= 1), "the third task frame")
      const next = yield* taskFrames(frames)
      assert.deepStrictEqual(next.map((f) => (f._tag === "task" ? [f.taskId, f.llmName] : [])), [[
        tasks[2]!.id,
        done.llmName
      ]])
    }).pipe(Effect.provide(Manual)))

  it.scoped("a task frame carries the attempt, the row's name and model, and the request body unchanged", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("pub", {
        sessionId: "sess-frame",
        providers: [{ name: "framed", type: "openai", model: "Qwen/Qwen2.5-7B", pool: "qwen" }]
      })
      const { frames } = yield* openStream("sess-frame", yield* Scope.make())
      const task = yield* enqueue("qwen", "what is in the frame")
      yield* eventually(Effect.map(Queue.size(frames), (n) => n >= 1), "the task frame")
      const [frame] = yield* taskFrames(frames)
      assert.deepStrictEqual(frame, {
        _tag: "task",
        kind: "infer",
        taskId: task.id,
        attempt: 1,
        llmName: "framed",
        model: "Qwen/Qwen2.5-7B",
        path: "/v1/chat/completions",
        streaming: false,
        body: { model: "qwen", messages: [{ role: "user", content: "what is in the frame" }] }
      })
    }).pipe(Effect.provide(Manual)))

  it.scoped("cancelling a held task sends the holder a cancel frame", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-cancel", providers: [provider("cancelme")] })
      const { frames } = yield* openStream("sess-cancel", yield* Scope.make())
      const task = yield* enqueue("cancelme")
      yield* eventually(Effect.map(Queue.size(frames), (n) => n >= 1), "the task frame")
      yield* Queue.takeAll(frames)
      yield* queue.cancel(task.id, "the client closed the connection")
      yield* eventually(Effect.map(Queue.size(frames), (n) => n >= 1), "the cancel frame")
      const [frame] = Chunk.toReadonlyArray(yield* Queue.takeAll(frames))
      assert.deepStrictEqual(frame, { _tag: "cancel", taskId: task.id, reason: "the client closed the connection" })
    }).pipe(Effect.provide(Manual)))

  it.scoped("a second stream replaces the first without unbinding; closing the current one unbinds", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("pub", { sessionId: "sess-twice", providers: [provider("twice")] })
      const firstScope = yield* Scope.make()
      const first = yield* openStream("sess-twice", firstScope)
      const task = yield* enqueue("twice")
      yield* eventually(Effect.map(taskStatus(task.id), (s) => s === "claimed"), "the claim")
      const secondScope = yield* Scope.make()
      yield* openStream("sess-twice", secondScope)
      yield* Fiber.join(first.fiber) // the first stream ended
      yield* Scope.close(firstScope, Effect.void as never)
      assert.strictEqual(yield* status("twice"), "active")
      assert.strictEqual(yield* taskStatus(task.id), "claimed")
      yield* Scope.close(secondScope, Effect.void as never)
      assert.strictEqual(yield* status("twice"), "inactive")
      assert.strictEqual(yield* taskStatus(task.id), "pending")
    }).pipe(Effect.provide(Manual)))
})

describe("the scheduled sweep", () => {
  it.scoped("flips a silent row past 90 s and not before, and deletes it past 4 h inactive", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("pub", { sessionId: "sess-sched", providers: [provider("sched")] })
      yield* TestClock.adjust("60 seconds")
      yield* settle
      yield* registry.register("pub", { sessionId: "sess-fresh", providers: [provider("fresh")] })
      yield* TestClock.adjust("29 seconds") // passes up to 89 s: nothing is stale yet
      yield* settle
      assert.strictEqual(yield* status("sched"), "active")
      // the next pass, at 104 s: 104 s of silence, 44 s for the fresh row
      // (at most to 134 s: the fresh row goes stale at 150 s)
      yield* eventuallyAdvancing(
        "1 seconds",
        Effect.map(status("sched"), (s) => s === "inactive"),
        "the row to go inactive",
        45
      )
      assert.strictEqual(yield* status("fresh"), "active")
      yield* TestClock.adjust("3 hours")
      yield* settle
      assert.isTrue(Option.isSome(yield* registry.findByName("sched")), "kept before 4 h")
      // TestClock wakes the fiber at its scheduled moment (15 s after the
      // last pass): move past 4 h, then on to the pass after that.
      yield* TestClock.adjust("1 hour")
      yield* eventuallyAdvancing(
        "5 seconds",
        Effect.map(registry.findByName("sched"), Option.isNone),
        "the row to be deleted"
      )
    }).pipe(Effect.provide(Scheduled)))

  it.scoped("reverts a claim nobody acknowledged within 30 s, on schedule", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const queue = yield* TaskQueue
      yield* registry.register("pub", { sessionId: "sess-noack", providers: [provider("noack", { maxConcurrent: 1 })] })
      yield* registry.bindSession("sess-noack")
      const task = yield* enqueue("noack")
      const frames = yield* queue.claimFor("sess-noack")
      assert.strictEqual(frames.length, 1)
      yield* TestClock.adjust("29 seconds")
      yield* settle
      assert.strictEqual(yield* taskStatus(task.id), "claimed")
      yield* eventuallyAdvancing("1 seconds", Effect.map(taskStatus(task.id), (s) => s === "pending"), "the revert")
    }).pipe(Effect.provide(Scheduled)))
})

describe("sessions the sweep deletes", () => {
  it.effect("a session silent past the inactive retention with nothing left is deleted; one holding a row is kept", () =>
    Effect.gen(function*() {
      const sessions = yield* Sessions
      const registry = yield* Registry
      const sweeper = yield* Sweeper
      const alice = { id: "alice", tokenId: "tok-alice", name: "alice", role: "publisher" as const }
      yield* sessions.register(alice, { sessionId: "gone-session", providers: [provider("gone-row")] })
      yield* sessions.close("gone-session", "goodbye")
      yield* TestClock.adjust("3 hours")
      yield* sessions.register(alice, { sessionId: "kept-session", providers: [provider("kept-row")] })
      yield* sessions.close("kept-session", "goodbye")
      yield* TestClock.adjust("61 minutes") // gone: 4h01m silent, its row deleted this pass; kept: 1h01m
      const { llms } = yield* sweeper.sweepOnce
      assert.deepStrictEqual(llms.deletedSessions, ["gone-session"])
      assert.isTrue(Option.isNone(yield* registry.findSession("gone-session")))
      assert.isTrue(Option.isSome(yield* registry.findSession("kept-session")))
      const again = yield* sweeper.sweepOnce
      assert.deepStrictEqual(again.llms.deletedSessions, [])
    }).pipe(Effect.provide(Manual)))

  it.effect("a deleted session's id registered by another principal is theirs at once: the old owner's posts are 403", () =>
    Effect.gen(function*() {
      const sessions = yield* Sessions
      const sweeper = yield* Sweeper
      const alice = { id: "alice", tokenId: "tok-alice", name: "alice", role: "publisher" as const }
      const bob = { id: "bob", tokenId: "tok-bob", name: "bob", role: "publisher" as const }
      yield* sessions.register(alice, { sessionId: "reused-id", providers: [provider("alice-row")] })
      yield* sessions.close("reused-id", "goodbye")
      yield* TestClock.adjust("4 hours")
      yield* TestClock.adjust("1 minute")
      // alice's ownership is remembered (a post just now), then the sweep deletes the session
      yield* sessions.authorize(alice, "reused-id")
      const { llms } = yield* sweeper.sweepOnce
      assert.deepStrictEqual(llms.deletedSessions, ["reused-id"])
      yield* sessions.register(bob, { sessionId: "reused-id", providers: [provider("bob-row")] })
      const alicePost = yield* Effect.either(sessions.authorize(alice, "reused-id"))
      assert.isTrue(alicePost._tag === "Left" && alicePost.left._tag === "Forbidden")
      yield* sessions.authorize(bob, "reused-id")
    }).pipe(Effect.provide(Manual)))
})
