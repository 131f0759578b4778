/**
 * Waiters (`TaskQueue.waitFor`) against real PostgreSQL: the output as
 * stored and replayed must be the output as posted, whatever path it takes
 * (live signal, replay for a late waiter, a gap fetched after a missed
 * signal, the slow poll after a lost terminal signal), and every way a task
 * can end reaches the waiter as its typed outcome, with the chunk stream
 * ended too.
 */
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Effect, Either, Fiber, Option, Queue, Stream, TestClock } from "effect"
import { TaskQueue, type Waiter } from "../../src/tasks/TaskQueue.js"
import { claimOne, enqueue, live, queueLayer, QueueTest, serve } from "../support/tasks.js"

/** Reads a waiter's chunk stream into a queue, so a test can wait for the n next chunks. */
const follow = (waiter: Waiter) =>
  Effect.gen(function*() {
    const seen = yield* Queue.unbounded<string>()
    const reader = yield* Effect.fork(Stream.runForEach(waiter.chunks, (c) => Queue.offer(seen, c)))
    return {
      next: (n: number) => Effect.map(live(Queue.takeN(seen, n), `${n} more chunk(s)`), Chunk.toReadonlyArray),
      /** The stream ended; returns whatever arrived and was not taken yet (duplicates, strays). */
      ended: Effect.zipRight(
        live(Fiber.join(reader), "the chunk stream to end"),
        Effect.map(Queue.takeAll(seen), Chunk.toReadonlyArray)
      ),
      isOpen: Effect.map(Fiber.poll(reader), Option.isNone)
    }
  })

/** A streaming task, claimed by `session-s` (attempt 1). */
const streamingTask = Effect.gen(function*() {
  yield* serve("session-s", [{ name: "l", maxConcurrent: 8 }])
  const task = yield* enqueue("l", { streaming: true })
  const frame = yield* claimOne("session-s")
  assert.strictEqual(frame.taskId, task.id)
  return task.id
})

describe("the chunk stream", () => {
  it.effect("delivers chunk text exactly as posted: quotes, backslashes, braces, NULL, empty, unicode", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const id = yield* streamingTask
      const first = [
        `{"choices":[{"delta":{"content":"say \\"hi\\""}}]}`,
        "back\\slash and \\\\ two",
        "{braces},commas,\"quotes\"",
        "NULL"
      ]
      const second = ["", "naïve 🚀 ünïcödé 中文", "line\nbreak\ttab\r", "'single' ARRAY[1]", "  padded  "]
      yield* queue.appendChunks("session-s", id, first, 1)
      const early = yield* follow(yield* queue.waitFor(id, "1 minute")) // replays `first` from the database
      assert.deepStrictEqual(yield* early.next(first.length), first)
      yield* queue.appendChunks("session-s", id, second, 1) // reaches `early` live
      assert.deepStrictEqual(yield* early.next(second.length), second)
      yield* queue.complete("session-s", id, { status: 200 }, 1)
      assert.deepStrictEqual(yield* early.ended, [], "no chunk twice")
      const late = yield* follow(yield* queue.waitFor(id, "1 minute")) // everything from the database
      assert.deepStrictEqual(yield* late.next(first.length + second.length), [...first, ...second])
      assert.deepStrictEqual(yield* late.ended, [])
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("several waiters of one task, attached at different points, each get every chunk once, in order", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const id = yield* streamingTask
      const batches = Array.from({ length: 6 }, (_, b) => [`b${b}-x`, `b${b}-y`])
      const waiters: Array<Effect.Effect.Success<ReturnType<typeof follow>>> = []
      for (const [b, batch] of batches.entries()) {
        if (b % 2 === 0) waiters.push(yield* follow(yield* queue.waitFor(id, "1 minute")))
        yield* queue.appendChunks("session-s", id, batch, 1)
      }
      yield* queue.complete("session-s", id, { status: 200 }, 1)
      for (const w of waiters) {
        assert.deepStrictEqual(yield* w.next(12), batches.flat())
        assert.deepStrictEqual(yield* w.ended, [])
      }
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("a batch whose signal was missed is fetched from the database when the next one arrives", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const id = yield* streamingTask
      const w = yield* follow(yield* queue.waitFor(id, "1 minute"))
      // batch 1 lands without a signal (as when a NOTIFY is lost)
      yield* sql`UPDATE llm_relay.inference_tasks SET status = 'running', output_started = true, chunk_count = 1 WHERE id = ${id}`
      yield* sql`INSERT INTO llm_relay.inference_task_chunks (task_id, seq, chunks) VALUES (${id}, 1, ARRAY['lost-1', 'lost-2'])`
      yield* queue.appendChunks("session-s", id, ["after"], 1) // its signal says seq 2: the waiter sees the gap
      // no clock move: the slow poll cannot be what delivers them
      assert.deepStrictEqual(yield* w.next(3), ["lost-1", "lost-2", "after"])
      assert.isTrue(yield* w.isOpen, "the task is still running")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("a finish whose signal was lost is noticed by the slow poll (30 s, woken by signals otherwise), output replayed first", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const id = yield* streamingTask
      const waiter = yield* queue.waitFor(id, "1 minute")
      const w = yield* follow(waiter)
      const result = yield* Effect.fork(waiter.result)
      yield* sql`INSERT INTO llm_relay.inference_task_chunks (task_id, seq, chunks) VALUES (${id}, 1, ARRAY['only'])`
      yield* sql`UPDATE llm_relay.inference_tasks SET status = 'completed', output_started = true, chunk_count = 1,
                   response_status = 200, completed_at = now() WHERE id = ${id}`
      yield* TestClock.adjust("29 seconds")
      assert.isTrue(Option.isNone(yield* Fiber.poll(result)), "no signal, no poll yet")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* live(Fiber.join(result), "the poll to see the end")).status, "completed")
      assert.deepStrictEqual(yield* w.next(1), ["only"])
      assert.deepStrictEqual(yield* w.ended, [])
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("a wait that runs out ends the chunk stream too, after the chunks that came in time", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const id = yield* streamingTask
      const waiter = yield* queue.waitFor(id, "10 seconds")
      const w = yield* follow(waiter)
      yield* queue.appendChunks("session-s", id, ["in time"], 1)
      assert.deepStrictEqual(yield* w.next(1), ["in time"])
      yield* TestClock.adjust("10 seconds")
      assert.strictEqual((yield* Effect.flip(waiter.result))._tag, "Timeout")
      assert.deepStrictEqual(yield* w.ended, [])
      yield* queue.appendChunks("session-s", id, ["too late"], 1) // the task itself runs on
      assert.strictEqual(Option.getOrThrow(yield* queue.get(id)).status, "running")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))

  it.effect("a waiter whose task row is deleted under it gets TaskCancelled, and its chunk stream ends", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const id = yield* streamingTask
      const waiter = yield* queue.waitFor(id, "1 minute")
      const w = yield* follow(waiter)
      const result = yield* Effect.fork(Effect.either(waiter.result))
      yield* sql`DELETE FROM llm_relay.inference_tasks WHERE id = ${id}`
      yield* TestClock.adjust("30 seconds") // the poll finds the row gone
      const outcome = yield* live(Fiber.join(result), "the waiter to notice")
      assert.strictEqual(Either.isLeft(outcome) ? outcome.left._tag : "completed", "TaskCancelled")
      assert.deepStrictEqual(yield* w.ended, [], "the stream ends with the result, not at some later deadline")
    }).pipe(Effect.provide(QueueTest), Effect.scoped))
})

describe("every way a task ends reaches its waiter as a typed outcome", () => {
  /** Each ending, done to a task already claimed by session-s with attempt 1; the waiter attached before. */
  const endings: ReadonlyArray<{
    readonly name: string
    readonly end: (id: string) => Effect.Effect<void, unknown, TaskQueue>
    readonly expected: string
    readonly message?: RegExp
    readonly check?: (left: { readonly _tag: string }) => void
  }> = [
    {
      name: "cancelled by the client",
      end: (id) => Effect.flatMap(TaskQueue, (q) => q.cancel(id, "the client closed the connection")),
      expected: "TaskCancelled",
      message: /^the client closed the connection$/
    },
    {
      name: "an upstream error without a body",
      end: (id) =>
        Effect.flatMap(TaskQueue, (q) => q.fail("session-s", id, { message: "upstream unavailable", status: 503 }, 1)),
      expected: "UpstreamError",
      message: /^upstream unavailable$/,
      check: (left) => {
        assert.strictEqual((left as { status?: number }).status, 503)
        assert.isUndefined((left as { body?: unknown }).body)
      }
    },
    {
      name: "a disconnect after output began",
      end: (id) =>
        Effect.flatMap(
          TaskQueue,
          (q) => Effect.zipRight(q.appendChunks("session-s", id, ["half an answer"], 1), q.revertHeldBy("session-s"))
        ),
      expected: "PublisherDisconnected",
      message: /disconnected/
    },
    {
      name: "a third lost dispatch",
      end: () =>
        Effect.flatMap(TaskQueue, (q) =>
          Effect.gen(function*() {
            yield* q.revertHeldBy("session-s")
            yield* q.claimFor("session-s")
            yield* q.revertHeldBy("session-s")
            yield* q.claimFor("session-s")
            yield* q.revertHeldBy("session-s")
          })),
      expected: "PublisherDisconnected",
      message: /dispatched 3 times/
    },
    {
      name: "a run longer than 30 minutes",
      end: (id) =>
        Effect.flatMap(TaskQueue, (q) =>
          Effect.gen(function*() {
            yield* q.ack("session-s", id, 1)
            yield* TestClock.adjust("31 minutes")
            yield* q.sweep
          })),
      expected: "Timeout",
      message: /longer than 30m/
    }
  ]

  for (const ending of endings) {
    it.effect(`${ending.name}: ${ending.expected}`, () =>
      Effect.gen(function*() {
        const queue = yield* TaskQueue
        const id = yield* streamingTask
        const waiter = yield* queue.waitFor(id, "1 day")
        const w = yield* follow(waiter)
        yield* ending.end(id)
        const outcome = yield* live(Effect.either(waiter.result), "the outcome")
        assert.isTrue(Either.isLeft(outcome), "the waiter fails")
        if (Either.isLeft(outcome)) {
          assert.strictEqual(outcome.left._tag, ending.expected)
          if (ending.message) assert.match(outcome.left.message, ending.message)
          ending.check?.(outcome.left)
        }
        yield* w.ended
        // a waiter attaching after the end gets the same answer at once
        const late = yield* Effect.either((yield* queue.waitFor(id, "1 second")).result)
        assert.strictEqual(Either.isLeft(late) ? late.left._tag : "completed", ending.expected)
      }).pipe(Effect.provide(QueueTest), Effect.scoped, Effect.orDie))
  }
})

describe("a reader that stops reading", () => {
  const SmallBuffer = queueLayer({ config: { maxBufferedOutput: 1000 } })

  it.scoped("is cut off once its unread output passes RELAY_MAX_BUFFERED_OUTPUT; the task goes on; a reader that reads is not", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const id = yield* streamingTask
      const idle = yield* queue.waitFor(id, "1 hour")
      const reading = yield* follow(yield* queue.waitFor(id, "1 hour"))
      const piece = "x".repeat(300)
      for (let i = 0; i < 3; i++) {
        yield* queue.appendChunks("session-s", id, [piece], 1)
        assert.deepStrictEqual(yield* reading.next(1), [piece])
      }
      // 900 bytes unread so far by the idle waiter; the next 300 pass the cap
      yield* queue.appendChunks("session-s", id, [piece], 1)
      assert.deepStrictEqual(yield* reading.next(1), [piece])
      const cut = yield* live(Stream.runCollect(idle.chunks).pipe(Effect.either), "the idle reader to be cut")
      assert.isTrue(Either.isLeft(cut) && cut.left._tag === "OutputOverflow")
      assert.match(Either.isLeft(cut) ? cut.left.message : "", /RELAY_MAX_BUFFERED_OUTPUT/)
      // the task is not the idle reader's to end: it completes, and the reader that read gets all of it
      yield* queue.appendChunks("session-s", id, ["end"], 1)
      yield* queue.complete("session-s", id, { status: 200 }, 1)
      assert.deepStrictEqual(yield* reading.next(1), ["end"])
      const done = yield* live(idle.result, "the idle waiter's result")
      assert.strictEqual(done.status, "completed")
    }).pipe(Effect.provide(SmallBuffer)))
})
