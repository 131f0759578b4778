/**
 * Who is woken when a pool has new work (ARCHITECTURE.md "Several
 * instances": an enqueue wakes a bounded number of claimers, never every
 * session of a big pool). Real PostgreSQL and the broker's session actors;
 * the clock never moves, so the slow poll never fires and every claim seen
 * here was caused by a wake-up.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Metric, Queue, Random, type Scope, TestServices } from "effect"
import * as Broker from "../../src/Broker.js"
import type { Frame, TaskFrame } from "../../src/domain/Frames.js"
import { Registry } from "../../src/registry/Registry.js"
import { Sessions } from "../../src/sessions/Sessions.js"
import { claimStatements } from "../../src/tasks/Repo.js"
import { TaskQueue } from "../../src/tasks/TaskQueue.js"
import { ConfigTest } from "../support/layers.js"
import { provider } from "../support/registry.js"
import { eventually, nextTask, openStream, settle } from "../support/sessions.js"
import { enqueue, row } from "../support/tasks.js"
import * as TestDatabase from "../support/TestDatabase.js"

const Services = Broker.services.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))

/** Claim statements run so far in this process. */
const claims = Effect.map(Metric.value(claimStatements), (state) => state.count)

/** Claims run while `effect` runs and things settle after it. */
const claimsDuring = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const before = yield* claims
    const result = yield* effect
    yield* settle
    return { result, claims: (yield* claims) - before }
  })

interface Member {
  readonly sessionId: string
  readonly name: string
  readonly frames: Queue.Queue<Frame>
}

/**
 * Opens `count` sessions, each one row of `pool` with room for `capacity`,
 * and waits until every actor has made its first claim (the one at bind).
 */
const openMembers = (
  pool: string,
  count: number,
  capacity: number | ((i: number) => number),
  scope: Scope.Scope
) =>
  Effect.gen(function*() {
    const registry = yield* Registry
    const before = yield* claims
    const members = yield* Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) =>
      Effect.gen(function*() {
        const sessionId = `session-${pool}-${i}`
        const name = `${pool}-r${i}`
        const slots = typeof capacity === "number" ? capacity : capacity(i)
        yield* registry.register("pub", { sessionId, providers: [provider(name, { pool, maxConcurrent: slots })] })
        const { frames } = yield* openStream(sessionId, scope)
        return { sessionId, name, frames } satisfies Member
      }), { concurrency: 8 })
    yield* eventually(Effect.map(claims, (n) => n - before >= count), "every actor's first claim")
    yield* settle
    return members
  })

const statusOf = (id: string) => Effect.map(row(id), (r) => r?.status)

const allIn = (ids: ReadonlyArray<string>, status: string) =>
  eventually(
    Effect.map(Effect.forEach(ids, statusOf), (statuses) => statuses.every((s) => s === status)),
    `all ${ids.length} tasks ${status}`
  )

const holderOf = (id: string) => Effect.map(row(id), (r) => r?.claimedBy)

/** The next task frame of a member, taken off its stream. */
const frameOf = (member: Member) => nextTask(member.frames)

const complete = (member: Member, frame: TaskFrame) =>
  Effect.flatMap(
    TaskQueue,
    (queue) => queue.complete(member.sessionId, frame.taskId, { status: 200, body: { ok: true } }, frame.attempt)
  )

describe("an enqueue wakes a bounded number of claimers", () => {
  it.scoped(
    "200 idle sessions of one pool: at most 5 claim statements per enqueue, one by one or in a burst",
    () =>
      Effect.gen(function*() {
        yield* openMembers("big", 200, 1, yield* Effect.scope)
        const one = yield* claimsDuring(Effect.gen(function*() {
          const ids: Array<string> = []
          for (let i = 0; i < 20; i++) ids.push((yield* enqueue("big")).id)
          yield* allIn(ids, "claimed")
        }))
        const burst = yield* claimsDuring(Effect.gen(function*() {
          const tasks = yield* Effect.forEach(Array.from({ length: 20 }), () => enqueue("big"), { concurrency: 20 })
          yield* allIn(tasks.map((t) => t.id), "claimed")
        }))
        // before the claimers registry: 200 (every session ran the claim) and 20 (wakes coalesced in a burst)
        assert.isAtMost(one.claims / 20, 5, `one by one: ${one.claims} claims for 20 enqueues`)
        assert.isAtMost(burst.claims / 20, 5, `in a burst: ${burst.claims} claims for 20 enqueues`)
        const queue = yield* TaskQueue
        assert.strictEqual((yield* queue.findPendingForPools(["big"])).length, 0)
      }).pipe(Effect.provide(Services)),
    120_000
  )

  it.scoped("a task pinned to one row of a big pool wakes that row's session alone", () =>
    Effect.gen(function*() {
      const members = yield* openMembers("pins", 50, 4, yield* Effect.scope)
      const target = members[17]!
      const { claims: n, result: task } = yield* claimsDuring(Effect.gen(function*() {
        const task = yield* enqueue(target.name)
        yield* allIn([task.id], "claimed")
        return task
      }))
      assert.strictEqual(yield* holderOf(task.id), target.sessionId)
      assert.strictEqual(n, 1, "one claim statement")
    }).pipe(Effect.provide(Services)))
})

describe("least-loaded dispatch", () => {
  it.scoped("the woken session is the one with the most free room, and a session whose task ended has room again", () =>
    Effect.gen(function*() {
      const members = yield* openMembers("ll", 5, 2, yield* Effect.scope)
      // four of the five hold one task each (pinned to their rows): only the last has two free slots
      const held = yield* Effect.forEach(members.slice(0, 4), (member) =>
        Effect.gen(function*() {
          const task = yield* enqueue(member.name)
          return { member, frame: yield* frameOf(member), task }
        }))
      for (let round = 0; round < 3; round++) {
        const { claims: n, result: task } = yield* claimsDuring(Effect.gen(function*() {
          const task = yield* enqueue("ll")
          yield* allIn([task.id], "claimed")
          return task
        }))
        assert.strictEqual(yield* holderOf(task.id), members[4]!.sessionId, `round ${round}: the idle session`)
        assert.strictEqual(n, 1, `round ${round}: one claim statement`)
        const frame = yield* frameOf(members[4]!)
        yield* complete(members[4]!, frame)
      }
      // the first member's task ends: it and the last have two free slots, the last was woken more recently
      yield* complete(held[0]!.member, held[0]!.frame)
      yield* settle
      const task = yield* enqueue("ll")
      yield* allIn([task.id], "claimed")
      assert.strictEqual(yield* holderOf(task.id), members[0]!.sessionId)
    }).pipe(Effect.provide(Services)))
})

describe("no task is left pending while a member has room (the slow poll never fires here)", () => {
  it.scoped(
    "bursts bigger than the idle room, pinned tasks, hand-backs and a session leaving: every task completes",
    () =>
      Effect.gen(function*() {
        const scope = yield* Effect.scope
        const sessions = yield* Sessions
        const queue = yield* TaskQueue
        const members = yield* openMembers("storm", 24, (i) => 1 + (i % 3), scope)
        const [handsBack, leaves] = [members[0]!, members[1]!]
        // Each member runs its tasks for 0-15 ms; the first hands every task back (its upstream is down).
        const publisher = (member: Member) =>
          Effect.forever(Effect.gen(function*() {
            const frame = yield* Queue.take(member.frames)
            if (frame._tag !== "task") return
            yield* Effect.forkIn(
              Effect.gen(function*() {
                yield* TestServices.provideLive(Effect.sleep(yield* Random.nextIntBetween(0, 15)))
                if (member === handsBack) {
                  yield* queue.fail(
                    member.sessionId,
                    frame.taskId,
                    { message: "down", status: 502, retry: true },
                    frame.attempt
                  )
                } else {
                  yield* complete(member, frame)
                }
              }).pipe(Effect.ignore),
              scope
            )
          }))
        yield* Effect.forEach(members, (member) => Effect.forkIn(publisher(member), scope), { discard: true })
        const before = yield* claims
        const ids: Array<string> = []
        for (let burst = 0; burst < 3; burst++) {
          const tasks = yield* Effect.forEach(
            Array.from({ length: 80 }, (_, i) => i),
            // one in ten pinned to a row of a member that neither hands back nor leaves
            (i) => enqueue(i % 10 === 0 ? members[2 + (i % 7)]!.name : "storm"),
            { concurrency: 80 }
          )
          ids.push(...tasks.map((t) => t.id))
          if (burst === 0) {
            // a session leaves while it holds tasks and may have wakes to answer: they go back and on
            yield* TestServices.provideLive(Effect.sleep("5 millis"))
            yield* sessions.close(leaves.sessionId, "lost")
          }
        }
        yield* eventually(
          Effect.map(Effect.forEach(ids, statusOf), (statuses) => statuses.every((s) => s === "completed")),
          `all ${ids.length} tasks completed`
        )
        const n = (yield* claims) - before
        assert.isAtMost(n / ids.length, 5, `${n} claim statements for ${ids.length} tasks`)
        const outcome = yield* Effect.forEach(ids, row)
        assert.isTrue(outcome.every((r) => r?.claimedBy !== handsBack.sessionId), "the hand-backs went to others")
      }).pipe(Effect.provide(Services)),
    120_000
  )

  it.scoped("a row healthy again takes what was queued for it meanwhile, the other members being full", () =>
    Effect.gen(function*() {
      const sessions = yield* Sessions
      const members = yield* openMembers("hp", 6, 1, yield* Effect.scope)
      const sick = members[5]!
      yield* sessions.heartbeat(sick.sessionId, [{ name: sick.name, healthy: false, reason: "refused" }])
      // the five healthy members fill up
      const first = yield* Effect.forEach(Array.from({ length: 5 }), () => enqueue("hp"))
      yield* allIn(first.map((t) => t.id), "claimed")
      const waiting = yield* enqueue("hp")
      const pinned = yield* enqueue(sick.name)
      yield* settle
      assert.deepStrictEqual([yield* statusOf(waiting.id), yield* statusOf(pinned.id)], ["pending", "pending"])
      yield* sessions.heartbeat(sick.sessionId, [{ name: sick.name, healthy: true, reason: null }])
      yield* allIn([waiting.id], "claimed")
      assert.strictEqual(yield* holderOf(waiting.id), sick.sessionId)
      // its one slot is taken: the pinned task waits for it
      const frame = yield* frameOf(sick)
      yield* complete(sick, frame)
      yield* allIn([pinned.id], "claimed")
      assert.strictEqual(yield* holderOf(pinned.id), sick.sessionId)
    }).pipe(Effect.provide(Services)))

  it.scoped("a task handed back by the session with the most room goes to another member at once", () =>
    Effect.gen(function*() {
      const queue = yield* TaskQueue
      const members = yield* openMembers("hb", 10, (i) => (i === 0 ? 8 : 1), yield* Effect.scope)
      const task = yield* enqueue("hb")
      const frame = yield* frameOf(members[0]!)
      assert.strictEqual(frame.taskId, task.id, "the session with most room took it")
      yield* queue.fail(members[0]!.sessionId, task.id, { message: "refused", status: 502, retry: true }, frame.attempt)
      yield* allIn([task.id], "claimed")
      const holder = yield* holderOf(task.id)
      assert.notStrictEqual(holder, members[0]!.sessionId)
      assert.strictEqual((yield* row(task.id))!.attempts, 2)
    }).pipe(Effect.provide(Services)))
})
