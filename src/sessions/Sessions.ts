/**
 * Publisher sessions as actors. Opening a session's task stream starts its
 * SessionActor: one fiber that binds the session's rows, claims tasks up to
 * each row's free `maxConcurrent`, and pushes `task` and `cancel` frames. It
 * claims on a pool signal for one of its pools, on one of its tasks finishing
 * while a row was full, and on a slow poll (signals are hints).
 *
 * A second stream for the same session replaces the first: the old stream
 * ends, the session stays bound. When the current stream's scope closes
 * (client gone, DELETE, heartbeat timeout) the session unbinds: rows inactive,
 * held tasks revert or fail.
 */
import { Context, Effect, Fiber, Layer, Mailbox, Option, Queue, Ref, type Scope, type Stream } from "effect"
import { RelayConfig } from "../config.js"
import type { Frame } from "../domain/Frames.js"
import type { Llm, SessionNotFound } from "../domain/Llm.js"
import { Registry } from "../registry/Registry.js"
import { Signals } from "../signals/Signals.js"
import { TaskQueue } from "../tasks/TaskQueue.js"

interface Actor {
  readonly mailbox: Mailbox.Mailbox<Frame>
  readonly fiber: Fiber.RuntimeFiber<void>
}

export const make = Effect.gen(function* () {
  const registry = yield* Registry
  const queue = yield* TaskQueue
  const signals = yield* Signals
  const config = yield* RelayConfig
  /** The current actor of each session open on this broker. */
  const actors = new Map<string, Actor>()

  /** Rows inactive, held tasks reverted: the session is offline. */
  const unbind = (sessionId: string) =>
    Effect.gen(function* () {
      yield* registry.unbindSession(sessionId)
      const reverted = yield* queue.revertHeldBy(sessionId)
      yield* Effect.logDebug(`session ${sessionId} offline; ${reverted} held task(s) reverted or failed`)
    })

  /** The actor's life: claim what fits, wait for a reason to look again, repeat. */
  const run = (sessionId: string, mailbox: Mailbox.Mailbox<Frame>) =>
    Effect.scoped(
      Effect.gen(function* () {
        const wake = yield* Queue.sliding<void>(1)
        // Pending work may be waiting for this session: a pool signal came, a
        // claim filled a row, or the slow poll fired. Only then is a claim
        // worth a round trip; a finished task alone frees room but brings none.
        const mayHaveWork = yield* Ref.make(true)
        const lookAgain = Effect.zipRight(Ref.set(mayHaveWork, true), Queue.offer(wake, undefined))
        /** Follows the pool (and name) signals of each row, once per pool. */
        const subscribed = new Set<string>()
        const follow = (rows: ReadonlyArray<Llm>) =>
          Effect.forEach(rows.flatMap((row) => [row.pool, row.name]), (pool) =>
            subscribed.has(pool) ? Effect.void : Effect.gen(function* () {
              subscribed.add(pool)
              const dequeue = yield* signals.subscribePool(pool)
              yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Queue.take(dequeue), lookAgain)))
            }), { discard: true })
        const own = yield* signals.subscribeSession(sessionId)
        yield* follow(yield* registry.bindSession(sessionId))
        yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(own), (event) => {
          switch (event._tag) {
            case "Cancel":
              return mailbox.offer({ _tag: "cancel", taskId: event.taskId, reason: event.reason })
            case "Freed":
              return Queue.offer(wake, undefined)
            case "Rows":
              // re-registered while open: new rows may serve new pools with work
              // waiting. A failed read must not end this listener (cancel frames
              // travel through it): the slow poll still finds the work.
              return Effect.zipRight(
                Effect.flatMap(registry.llmsOfSession(sessionId), follow).pipe(
                  Effect.catchAllCause((cause) => Effect.logWarning(`session ${sessionId}: could not re-read its rows`, cause))
                ),
                lookAgain
              )
          }
        })))
        while (true) {
          if (yield* Ref.getAndSet(mayHaveWork, false)) {
            const { frames, full, retry } = yield* queue.claim(sessionId)
            if (frames.length > 0) yield* mailbox.offerAll(frames)
            if (full) yield* Ref.set(mayHaveWork, true)
            if (retry) continue
          }
          const woke = yield* Queue.take(wake).pipe(Effect.timeout(config.sessionPollInterval), Effect.option)
          // The slow poll: signals are hints, so look anyway now and then.
          if (Option.isNone(woke)) yield* Ref.set(mayHaveWork, true)
        }
      })
    ).pipe(
      Effect.catchAllCause((cause) =>
        Effect.zipRight(Effect.logError(`session ${sessionId} actor failed`, cause), mailbox.end)
      ),
      Effect.asVoid
    )

  /**
   * Opens the session's task stream in the caller's Scope. Closing that scope
   * ends the session, unless a newer stream has replaced this one.
   */
  const open = Effect.fn("Sessions.open")(function* (sessionId: string) {
    yield* registry.getSession(sessionId)
    const previous = actors.get(sessionId)
    if (previous !== undefined) {
      actors.delete(sessionId)
      yield* previous.mailbox.end
      yield* Fiber.interrupt(previous.fiber)
    }
    const mailbox = yield* Mailbox.make<Frame>()
    const fiber = yield* Effect.forkDaemon(run(sessionId, mailbox))
    const actor: Actor = { mailbox, fiber }
    actors.set(sessionId, actor)
    yield* Effect.addFinalizer(() =>
      actors.get(sessionId) === actor
        ? Effect.zipRight(stop(sessionId, actor), unbind(sessionId))
        : Effect.void
    )
    return Mailbox.toStream(mailbox)
  })

  const stop = (sessionId: string, actor: Actor) =>
    Effect.gen(function* () {
      if (actors.get(sessionId) === actor) actors.delete(sessionId)
      yield* actor.mailbox.end
      yield* Fiber.interrupt(actor.fiber)
    })

  /** Goodbye or heartbeat timeout: end the stream if open here, and unbind either way. */
  const close = Effect.fn("Sessions.close")(function* (sessionId: string) {
    const actor = actors.get(sessionId)
    if (actor !== undefined) yield* stop(sessionId, actor)
    yield* unbind(sessionId)
  })

  const isOpen = (sessionId: string) => Effect.sync(() => actors.has(sessionId))

  /** At shutdown: end every stream here (sessions unbind via their scopes, or at the next start). */
  yield* Effect.addFinalizer(() =>
    Effect.forEach([...actors.entries()], ([id, actor]) => stop(id, actor), { discard: true })
  )

  return { open, close, isOpen } as const
})

export class Sessions extends Context.Tag("llm-relay/Sessions")<Sessions, {
  readonly open: (sessionId: string) => Effect.Effect<Stream.Stream<Frame>, SessionNotFound, Scope.Scope>
  readonly close: (sessionId: string) => Effect.Effect<void>
  readonly isOpen: (sessionId: string) => Effect.Effect<boolean>
}>() {
  /** Needs the `Registry`, `TaskQueue`, `Signals` and `RelayConfig`. */
  static readonly layer = Layer.scoped(this, make)
}
