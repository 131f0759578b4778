/**
 * Wake-ups between the parts of the broker: a pool has new work, a task moved
 * (or streamed chunks), a session must cancel a task or has capacity again.
 * Signals are hints, never the truth: every subscriber re-reads PostgreSQL
 * after subscribing and on a slow poll. This is the in-process implementation
 * (one broker); a LISTEN/NOTIFY one would keep the same interface.
 *
 * A pool wake says which pool has one more unit of work, not who should take
 * it: each broker instance receives every pool wake once (`subscribeWakes`)
 * and chooses among the sessions it holds itself (src/sessions/Claimers.ts),
 * so one enqueue costs a bounded number of claims however big the pool.
 */
import { Context, Effect, Layer, Queue, type Scope } from "effect"
import type { Task, TaskStatus } from "../domain/Task.js"

/**
 * How a task ended, as much as its waiters need (so they need not read the
 * row): the task, why it failed (`inference_tasks.error_type`) and how many
 * output batches it has.
 */
export interface TaskEnding {
  readonly task: Task
  readonly errorType: string | null
  readonly chunkCount: number
}

export type TaskEvent =
  /** A batch of output, `seq` counting batches from 1. */
  | { readonly _tag: "Chunks"; readonly seq: number; readonly chunks: ReadonlyArray<string> }
  /** The task's row changed to `status` (a waiter re-reads the row only when it is terminal). */
  | { readonly _tag: "Changed"; readonly status: TaskStatus }
  /** The task ended; how it ended travels along, so waiters need not read the row. */
  | { readonly _tag: "Finished"; readonly ending: TaskEnding }

export type SessionEvent =
  | { readonly _tag: "Cancel"; readonly taskId: string; readonly reason: string }
  /**
   * One of the session's tasks finished or left it: it may claim again. The
   * row that held it, when known, so the session's room is counted per pool.
   */
  | { readonly _tag: "Freed"; readonly llmName?: string | null | undefined }
  /** The session re-registered: its rows (and so its pools) may have changed. */
  | { readonly _tag: "Rows" }
  /** A row of the session became healthy: work queued meanwhile may be its to take. */
  | { readonly _tag: "Look" }

/** One unit of new work in a pool (a task enqueued or back in the queue): one claimer should look. */
export interface PoolWake {
  readonly pool: string
  /** The task is pinned to this row: only the row's session can take it. */
  readonly llmName?: string | null | undefined
  /**
   * The session that handed the task back: it skips the task while another
   * member is online, so another member should look first.
   */
  readonly handedBackBy?: string | null | undefined
}

export interface SignalsShape {
  /** The pool has one more pending task: one claimer, chosen by the instance that holds it, looks. */
  readonly wakePool: (wake: PoolWake) => Effect.Effect<void>
  /** Every pool's wakes, each once: what an instance's claimers' dispatcher follows. */
  readonly subscribeWakes: Effect.Effect<Queue.Dequeue<PoolWake>, never, Scope.Scope>
  /** One pool's wakes. */
  readonly subscribePool: (pool: string) => Effect.Effect<Queue.Dequeue<PoolWake>, never, Scope.Scope>
  /** A member of the pool came, went or changed health: calls queued for it re-check who serves it. */
  readonly poolChanged: (pool: string) => Effect.Effect<void>
  readonly subscribePoolChanges: (pool: string) => Effect.Effect<Queue.Dequeue<void>, never, Scope.Scope>
  readonly publishTask: (taskId: string, event: TaskEvent) => Effect.Effect<void>
  readonly subscribeTask: (taskId: string) => Effect.Effect<Queue.Dequeue<TaskEvent>, never, Scope.Scope>
  readonly publishSession: (sessionId: string, event: SessionEvent) => Effect.Effect<void>
  readonly subscribeSession: (sessionId: string) => Effect.Effect<Queue.Dequeue<SessionEvent>, never, Scope.Scope>
}

/**
 * Subscribers by key: publishing costs only the subscribers of that key, so a
 * chunk for one task does not touch the waiters of every other task.
 */
const keyedHub = <A>() => {
  const subscribers = new Map<string, Set<Queue.Queue<A>>>()
  const publish = (key: string, value: A) =>
    Effect.sync(() => {
      const set = subscribers.get(key)
      if (set !== undefined) { for (const queue of set) Queue.unsafeOffer(queue, value) }
    })
  const subscribe = (key: string): Effect.Effect<Queue.Dequeue<A>, never, Scope.Scope> =>
    Effect.acquireRelease(
      Effect.tap(Queue.unbounded<A>(), (queue) =>
        Effect.sync(() => {
          const set = subscribers.get(key) ?? new Set()
          set.add(queue)
          subscribers.set(key, set)
        })),
      (queue) =>
        Effect.zipRight(
          Effect.sync(() => {
            const set = subscribers.get(key)
            set?.delete(queue)
            if (set !== undefined && set.size === 0) subscribers.delete(key)
          }),
          Queue.shutdown(queue)
        )
    )
  return { publish, subscribe }
}

export const makeLocal = Effect.sync((): SignalsShape => {
  const pools = keyedHub<PoolWake>()
  /** Every pool's wakes, under one key. */
  const wakes = keyedHub<PoolWake>()
  const poolChanges = keyedHub<void>()
  const tasks = keyedHub<TaskEvent>()
  const sessions = keyedHub<SessionEvent>()
  return {
    wakePool: (wake) => Effect.zipRight(pools.publish(wake.pool, wake), wakes.publish("*", wake)),
    subscribeWakes: wakes.subscribe("*"),
    subscribePool: pools.subscribe,
    poolChanged: (pool) => poolChanges.publish(pool, undefined),
    subscribePoolChanges: poolChanges.subscribe,
    publishTask: tasks.publish,
    subscribeTask: tasks.subscribe,
    publishSession: sessions.publish,
    subscribeSession: sessions.subscribe
  }
})

export class Signals extends Context.Tag("llm-relay/Signals")<Signals, SignalsShape>() {
  static readonly layerLocal = Layer.effect(this, makeLocal)
}
