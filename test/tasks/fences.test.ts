/**
 * Every publisher post (ack, chunks, result, error) is a compare-and-set
 * fenced by the holder and, when the post carries it, the attempt. This file
 * walks the whole matrix: each post in each situation a late or foreign post
 * can meet, the typed error it must get, and that a rejected post changes
 * nothing. One database for the file; each case uses its own sessions and pool.
 */
import { SqlClient } from "@effect/sql"
import { assert, layer } from "@effect/vitest"
import { Effect, Option, TestClock } from "effect"
import type { Registry } from "../../src/registry/Registry.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { claimOne, enqueue, QueueTest, serve, tagOf } from "../support/tasks.js"

type PostKind = "ack" | "chunks" | "complete" | "fail"
const POSTS: ReadonlyArray<PostKind> = ["ack", "chunks", "complete", "fail"]
type Expected = "ok (no-op)" | "TaskNotHeld" | "TaskCancelled" | "TaskAlreadyTerminal" | "TaskNotFound"

/** Who posts, for which task, with which attempt (undefined: the post carries none). */
interface Post {
  readonly session: string
  readonly taskId: string
  readonly attempt: number | undefined
}

let counter = 0
/** Names unique to one case: its holder, another session, their rows and pool. */
const names = () => {
  const n = `fence-${++counter}`
  return { holder: `${n}-holder`, other: `${n}-other`, pool: `${n}-pool` }
}

/** A pool served by a holder and another session; one task, claimed by the holder (attempt 1). */
const heldTask = Effect.gen(function*() {
  const n = names()
  yield* serve(n.holder, [{ name: `${n.holder}-row`, pool: n.pool }])
  yield* serve(n.other, [{ name: `${n.other}-row`, pool: n.pool }])
  const task = yield* enqueue(n.pool, { streaming: true })
  const frame = yield* claimOne(n.holder)
  assert.strictEqual(frame.taskId, task.id)
  return { ...n, taskId: task.id, attempt: frame.attempt }
})

const situations: ReadonlyArray<{
  readonly name: string
  readonly expected: (post: PostKind) => Expected
  readonly setup: Effect.Effect<Post, unknown, TaskQueue | Registry>
}> = [
  {
    name: "a session that never held the task",
    expected: () => "TaskNotHeld",
    setup: Effect.map(heldTask, (t) => ({ session: t.other, taskId: t.taskId, attempt: t.attempt }))
  },
  {
    name: "a session that never held the task, posting no attempt",
    expected: () => "TaskNotHeld",
    setup: Effect.map(heldTask, (t) => ({ session: t.other, taskId: t.taskId, attempt: undefined }))
  },
  {
    name: "the holder naming an attempt that never was",
    expected: () => "TaskNotHeld",
    setup: Effect.map(heldTask, (t) => ({ session: t.holder, taskId: t.taskId, attempt: t.attempt + 1 }))
  },
  {
    name: "the former holder while the task waits pending again",
    expected: () => "TaskNotHeld",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(TaskQueue, (q) => q.revertHeldBy(t.holder))
      return { session: t.holder, taskId: t.taskId, attempt: t.attempt }
    })
  },
  {
    name: "the former holder after the task went to another session",
    expected: () => "TaskNotHeld",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(TaskQueue, (q) => q.revertHeldBy(t.holder))
      assert.strictEqual((yield* claimOne(t.other)).attempt, 2)
      return { session: t.holder, taskId: t.taskId, attempt: t.attempt }
    })
  },
  {
    name: "the holder with its first attempt after the task was re-dispatched to it",
    expected: () => "TaskNotHeld",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(TaskQueue, (q) => q.revertHeldBy(t.holder))
      assert.strictEqual((yield* claimOne(t.holder)).attempt, 2)
      return { session: t.holder, taskId: t.taskId, attempt: 1 }
    })
  },
  {
    name: "the holder after the task was cancelled",
    expected: () => "TaskCancelled",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(TaskQueue, (q) => q.cancel(t.taskId, "the client went away"))
      return { session: t.holder, taskId: t.taskId, attempt: t.attempt }
    })
  },
  {
    name: "a stale attempt of a task cancelled since",
    expected: () => "TaskCancelled",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(TaskQueue, (q) => q.revertHeldBy(t.holder))
      yield* claimOne(t.other)
      yield* Effect.flatMap(TaskQueue, (q) => q.cancel(t.taskId, "the client went away"))
      return { session: t.holder, taskId: t.taskId, attempt: 1 }
    })
  },
  {
    name: "the holder after it completed the task",
    expected: (post) => (post === "complete" ? "ok (no-op)" : "TaskAlreadyTerminal"),
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(
        TaskQueue,
        (q) => q.complete(t.holder, t.taskId, { status: 200, body: { first: true } }, t.attempt)
      )
      return { session: t.holder, taskId: t.taskId, attempt: t.attempt }
    })
  },
  {
    name: "the holder, posting no attempt, after it completed the task",
    expected: (post) => (post === "complete" ? "ok (no-op)" : "TaskAlreadyTerminal"),
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(TaskQueue, (q) => q.complete(t.holder, t.taskId, { status: 200, body: { first: true } }))
      return { session: t.holder, taskId: t.taskId, attempt: undefined }
    })
  },
  {
    name: "the holder after it reported an upstream error",
    expected: () => "TaskAlreadyTerminal",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      yield* Effect.flatMap(
        TaskQueue,
        (q) => q.fail(t.holder, t.taskId, { message: "upstream 500", status: 500 }, t.attempt)
      )
      return { session: t.holder, taskId: t.taskId, attempt: t.attempt }
    })
  },
  {
    name: "the holder after the sweep ended its 30-minute run",
    expected: () => "TaskAlreadyTerminal",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      const queue = yield* TaskQueue
      yield* queue.ack(t.holder, t.taskId, t.attempt)
      yield* TestClock.adjust("31 minutes")
      yield* queue.sweep
      return { session: t.holder, taskId: t.taskId, attempt: t.attempt }
    })
  },
  {
    name: "the holder after its disconnect ended the task (output had started)",
    expected: () => "TaskAlreadyTerminal",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      const queue = yield* TaskQueue
      yield* queue.appendChunks(t.holder, t.taskId, ["partial"], t.attempt)
      yield* queue.revertHeldBy(t.holder)
      return { session: t.holder, taskId: t.taskId, attempt: t.attempt }
    })
  },
  {
    name: "the holder of the third dispatch after it was lost too",
    expected: () => "TaskAlreadyTerminal",
    setup: Effect.gen(function*() {
      const t = yield* heldTask
      const queue = yield* TaskQueue
      yield* queue.revertHeldBy(t.holder)
      yield* claimOne(t.holder)
      yield* queue.revertHeldBy(t.holder)
      assert.strictEqual((yield* claimOne(t.holder)).attempt, 3)
      yield* queue.revertHeldBy(t.holder)
      return { session: t.holder, taskId: t.taskId, attempt: 3 }
    })
  },
  {
    name: "anyone, for a task that does not exist",
    expected: () => "TaskNotFound",
    setup: Effect.map(heldTask, (t) => ({ session: t.holder, taskId: `${t.taskId}-missing`, attempt: 1 }))
  }
]

const send = (kind: PostKind, p: Post) =>
  Effect.flatMap(TaskQueue, (q) => {
    switch (kind) {
      case "ack":
        return q.ack(p.session, p.taskId, p.attempt)
      case "chunks":
        return q.appendChunks(p.session, p.taskId, ["late"], p.attempt)
      case "complete":
        return q.complete(p.session, p.taskId, { status: 200, body: { late: true } }, p.attempt)
      case "fail":
        return q.fail(p.session, p.taskId, { message: "late", status: 502 }, p.attempt)
    }
  })

/** Everything a post could change: the row and its stored output. */
const snapshot = (taskId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.all([
      sql`SELECT * FROM llm_relay.inference_tasks WHERE id = ${taskId}`,
      sql`SELECT seq, chunks FROM llm_relay.inference_task_chunks WHERE task_id = ${taskId} ORDER BY seq`
    ]).pipe(Effect.map((parts) => JSON.stringify(parts)), Effect.orDie))

layer(QueueTest)("publisher posts are fenced by holder and attempt", (it) => {
  for (const situation of situations) {
    for (const kind of POSTS) {
      const expected = situation.expected(kind)
      it.effect(`${kind} by ${situation.name}: ${expected}, and nothing changes`, () =>
        Effect.gen(function*() {
          const post = yield* situation.setup
          const before = yield* snapshot(post.taskId)
          yield* TestClock.adjust("1 second") // a write would now leave a different updated_at
          const outcome = yield* Effect.either(send(kind, post))
          assert.strictEqual(tagOf(outcome, "ok (no-op)"), expected)
          assert.strictEqual(yield* snapshot(post.taskId), before, "a rejected or repeated post writes nothing")
        }).pipe(Effect.orDie))
    }
  }

  it.effect("the holder may post without an attempt: the fence is then the session alone", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const t = yield* heldTask
      yield* queue.ack(t.holder, t.taskId)
      yield* queue.appendChunks(t.holder, t.taskId, ["a"])
      yield* queue.complete(t.holder, t.taskId, { status: 200 })
      assert.strictEqual(Option.getOrThrow(yield* queue.get(t.taskId)).status, "completed")
    }))

  it.effect("an empty chunk batch is an ack: it moves claimed to running and stores no batch", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const sql = yield* SqlClient.SqlClient
      const t = yield* heldTask
      yield* queue.appendChunks(t.holder, t.taskId, [], t.attempt)
      assert.strictEqual(Option.getOrThrow(yield* queue.get(t.taskId)).status, "running")
      const stored = yield* sql<
        { n: number }
      >`SELECT count(*)::int AS n FROM llm_relay.inference_task_chunks WHERE task_id = ${t.taskId}`
      assert.strictEqual(stored[0]!.n, 0)
      // …and, having no output, the task may still go back to the queue
      yield* queue.revertHeldBy(t.holder)
      assert.strictEqual(Option.getOrThrow(yield* queue.get(t.taskId)).status, "pending")
    }))

  it.effect("a result or an error counts as the ack: a claimed task may end at once", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const a = yield* heldTask
      const b = yield* heldTask
      yield* queue.complete(a.holder, a.taskId, { status: 200, body: { ok: true } }, a.attempt)
      yield* queue.fail(b.holder, b.taskId, { message: "bad gateway", status: 502 }, b.attempt)
      assert.strictEqual(Option.getOrThrow(yield* queue.get(a.taskId)).status, "completed")
      assert.strictEqual(Option.getOrThrow(yield* queue.get(b.taskId)).status, "error")
    }))
})
