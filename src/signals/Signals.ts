/**
 * Wake-ups between the parts of the broker: a pool has new work, a task moved
 * (or streamed chunks), a session must cancel a task or has capacity again.
 * Signals are hints, never the truth: every subscriber re-reads PostgreSQL
 * after subscribing and on a slow poll. This is the in-process implementation
 * (one broker); a LISTEN/NOTIFY one would keep the same interface.
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
  /** One of the session's tasks finished or left it: it may claim again. */
  | { readonly _tag: "Freed" }
  /** The session re-registered: its rows (and so its pools) may have changed. */
  | { readonly _tag: "Rows" }

export interface SignalsShape {
  /** The pool has new pending work: its sessions look for it. */
  readonly wakePool: (pool: string) => Effect.Effect<void>
  readonly subscribePool: (pool: string) => Effect.Effect<Queue.Dequeue<void>, never, Scope.Scope>
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
  const pools = keyedHub<void>()
  const poolChanges = keyedHub<void>()
  const tasks = keyedHub<TaskEvent>()
  const sessions = keyedHub<SessionEvent>()
  return {
    wakePool: (pool) => pools.publish(pool, undefined),
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
