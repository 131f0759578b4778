/**
 * Publisher sessions as actors. Opening a session's task stream starts its
 * SessionActor: one fiber that binds the session's rows, claims tasks up to
 * each row's free `maxConcurrent`, and pushes `task` and `cancel` frames. It
 * claims when this broker's claimers registry wakes it for one of its pools
 * (one claimer per unit of new work, the one with most room: Claimers.ts),
 * on one of its tasks finishing while a row was full, when a row of it is
 * healthy again, and on a slow poll (signals are hints).
 *
 * A new stream first re-sends the `task` frames of the session's claims it
 * has not acknowledged (same attempt).
 *
 * The actors live in a FiberMap keyed by session id, so a second stream for
 * the same session replaces the first: running its actor interrupts the old
 * one, the old stream ends, the session stays bound. When the current stream's scope closes
 * (client gone, DELETE, heartbeat timeout) the session unbinds: rows inactive,
 * held tasks revert or fail.
 */
import {
  Cache,
  Context,
  Duration,
  Effect,
  Fiber,
  FiberMap,
  Layer,
  Mailbox,
  Option,
  Queue,
  Ref,
  type Scope,
  type Stream
} from "effect"
import { RelayConfig } from "../config.js"
import { Forbidden } from "../domain/Errors.js"
import type { Frame } from "../domain/Frames.js"
import { type Llm, type Registration, SessionNotFound } from "../domain/Llm.js"
import type { Principal } from "../domain/Token.js"
import { type ProviderHealth, Registry } from "../registry/Registry.js"
import { Signals } from "../signals/Signals.js"
import { TaskQueue } from "../tasks/TaskQueue.js"
import * as Claimers from "./Claimers.js"

type RegisterError = Effect.Effect.Error<ReturnType<Context.Tag.Service<Registry>["register"]>>

/** Why a session ends: it said goodbye, or it was lost (stream, heartbeat or claim acknowledgement). */
export type CloseReason = "goodbye" | "lost"

export interface SessionsShape {
  /** Register (or re-register) a session's providers; an open stream of the session follows its new rows' pools. */
  readonly register: (principal: Principal, request: unknown) => Effect.Effect<Registration, RegisterError>
  /** The session must exist (SessionNotFound) and be the principal's (Forbidden; an admin owns all). */
  readonly authorize: (principal: Principal, sessionId: string) => Effect.Effect<void, SessionNotFound | Forbidden>
  /**
   * Opens the session's task stream in the caller's Scope, replacing a stream
   * already open for it. Closing that scope ends the session, unless a newer
   * stream has replaced this one.
   */
  readonly open: (sessionId: string) => Effect.Effect<Stream.Stream<Frame>, SessionNotFound, Scope.Scope>
  /**
   * Goodbye or heartbeat timeout: end the stream if open here, and unbind
   * either way. After a goodbye its pools are offline at once; a lost session
   * leaves them reconnecting for the grace.
   */
  readonly close: (sessionId: string, reason: CloseReason) => Effect.Effect<void>
  /**
   * A heartbeat (SessionNotFound for an unknown session): bumps the session's
   * rows, and stores the health it reports per provider. A row whose health
   * changed re-routes the calls queued for its pool; one healthy again makes
   * its session look for work, one gone unhealthy wakes a claimer of its pool
   * (a fellow member may now take the tasks it handed back).
   */
  readonly heartbeat: (
    sessionId: string,
    providers?: ReadonlyArray<ProviderHealth>
  ) => Effect.Effect<void, SessionNotFound>
  /**
   * One of the principal's tokens was revoked: each of the principal's
   * sessions ends as after a goodbye (stream closed, rows inactive, held tasks
   * back to the queue), so an open stream stops receiving prompts at once.
   */
  readonly closeAllOf: (principalId: string) => Effect.Effect<number>
  /** Sessions the sweep deleted: their remembered owners are dropped. */
  readonly forget: (sessionIds: ReadonlyArray<string>) => Effect.Effect<void>
  /** Whether the session's stream is open on this broker. */
  readonly isOpen: (sessionId: string) => Effect.Effect<boolean>
}

export const make = Effect.gen(function*() {
  const registry = yield* Registry
  const queue = yield* TaskQueue
  const signals = yield* Signals
  const config = yield* RelayConfig
  /**
   * The actor of each session open on this broker. Running a new one for a
   * session interrupts the old; closing the layer's scope interrupts them all.
   */
  const actors = yield* FiberMap.make<string>()
  /** Which actor looks when a pool has new work; it follows every pool wake, each once. */
  const claimers = yield* Claimers.make
  const wakes = yield* signals.subscribeWakes
  yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(wakes), claimers.dispatch)))

  /**
   * A session's owner never changes (registration refuses another
   * principal), so it is remembered: publisher posts, the hot path, then
   * cost no extra query.
   */
  const owners = yield* Cache.make({
    capacity: 100_000,
    timeToLive: Duration.minutes(10),
    lookup: (sessionId: string) => Effect.map(registry.findSession(sessionId), Option.map((s) => s.principalId))
  })

  const authorize = (principal: Principal, sessionId: string) =>
    Effect.gen(function*() {
      // shared with concurrent posts of the session: it must not die with the request that started it
      const owner = yield* Effect.uninterruptible(owners.get(sessionId))
      if (Option.isNone(owner)) {
        yield* owners.invalidate(sessionId)
        return yield* new SessionNotFound({ message: `no publisher session '${sessionId}'` })
      }
      if (principal.role !== "admin" && owner.value !== principal.id) {
        return yield* new Forbidden({ message: `session '${sessionId}' belongs to another principal` })
      }
    })

  /** Calls queued for these rows' pools re-check who serves them. */
  const poolsChanged = (rows: ReadonlyArray<Llm>) =>
    Effect.forEach(new Set(rows.map((row) => row.pool)), signals.poolChanged, { discard: true })

  const register = (principal: Principal, request: unknown) =>
    Effect.tap(
      registry.register(principal.id, request),
      // an open stream of the session follows its new rows' pools; a session id the sweep
      // deleted may now be another principal's: its remembered owner goes
      (registration) =>
        Effect.zipRight(
          Effect.zipRight(
            owners.invalidate(registration.sessionId),
            signals.publishSession(registration.sessionId, { _tag: "Rows" })
          ),
          poolsChanged(registration.llms)
        )
    )

  /** The sweep deleted these sessions: what this broker remembers of their owners goes too. */
  const forget = (sessionIds: ReadonlyArray<string>) =>
    Effect.forEach(sessionIds, (id) => owners.invalidate(id), { discard: true })

  /**
   * Sessions whose stream this broker is ending because they said goodbye:
   * their actor unbinds them as gone for good, not lost.
   */
  const goodbyes = new Set<string>()

  /** Rows inactive, held tasks reverted: the session is offline. */
  const unbind = (sessionId: string, goodbye: boolean) =>
    Effect.gen(function*() {
      const rows = yield* registry.unbindSession(sessionId, goodbye)
      const reverted = yield* queue.revertHeldBy(sessionId)
      yield* poolsChanged(rows)
      // a member that handed a task back skips it only while another is online: this one was
      yield* Effect.forEach(new Set(rows.map((row) => row.pool)), (pool) => signals.wakePool({ pool }), {
        discard: true
      })
      yield* Effect.logDebug(
        `session ${sessionId} ${goodbye ? "said goodbye" : "lost"}; ${reverted} held task(s) reverted or failed`
      )
    })

  /** The actor's life: claim what fits, wait for a reason to look again, repeat. */
  const run = (sessionId: string, mailbox: Mailbox.Mailbox<Frame>) =>
    Effect.scoped(
      Effect.gen(function*() {
        const wake = yield* Queue.sliding<void>(1)
        // Pending work may be waiting for this session: the registry woke it
        // for a pool, a claim filled a row, a row is healthy again, or the slow
        // poll fired. Only then is a claim worth a round trip; a finished task
        // alone frees room but brings none.
        const mayHaveWork = yield* Ref.make(true)
        const lookAgain = Effect.zipRight(Ref.set(mayHaveWork, true), Queue.offer(wake, undefined))
        // Leaving (this scope closing) passes on the wakes it has not answered.
        const claimer = yield* claimers.join(sessionId, lookAgain)
        const follow = (rows: ReadonlyArray<Llm>) => claimer.serve(rows)
        const own = yield* signals.subscribeSession(sessionId)
        const bound = yield* registry.bindSession(sessionId)
        // Claims this session has not acknowledged go out again first (same
        // attempt): their frames may have been lost with a stream this one
        // replaces, or with a broker instance that died.
        const unacknowledged = yield* queue.unacknowledged(sessionId)
        if (unacknowledged.length > 0) {
          yield* mailbox.offerAll(unacknowledged)
        }
        // woken for its pools from now on; the first claim below sees what was queued before
        yield* follow(bound)
        yield* poolsChanged(bound)
        yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(own), (event) => {
          switch (event._tag) {
            case "Cancel":
              return mailbox.offer({ _tag: "cancel", taskId: event.taskId, reason: event.reason })
            case "Freed":
              return Effect.zipRight(claimer.freed(event.llmName), Queue.offer(wake, undefined))
            case "Look":
              return lookAgain
            case "Rows":
              // re-registered while open: new rows may serve new pools with work
              // waiting. A failed read must not end this listener (cancel frames
              // travel through it): the slow poll still finds the work.
              return Effect.zipRight(
                Effect.flatMap(registry.llmsOfSession(sessionId), follow).pipe(
                  Effect.catchAllCause((cause) =>
                    Effect.logWarning(`session ${sessionId}: could not re-read its rows`, cause)
                  )
                ),
                lookAgain
              )
          }
        })))
        while (true) {
          if (yield* Ref.getAndSet(mayHaveWork, false)) {
            yield* claimer.claimStarts
            const { frames, full, retry, rooms } = yield* queue.claim(sessionId)
            // counts its room, and passes on the wakes it could not answer
            yield* claimer.claimEnded(rooms)
            if (frames.length > 0) {
              yield* mailbox.offerAll(frames)
            }
            if (full) {
              yield* Ref.set(mayHaveWork, true)
            }
            if (retry) {
              continue
            }
          }
          const woke = yield* Queue.take(wake).pipe(Effect.timeout(config.sessionPollInterval), Effect.option)
          // The slow poll: signals are hints, so look anyway now and then.
          if (Option.isNone(woke)) {
            yield* Ref.set(mayHaveWork, true)
          }
        }
      })
    ).pipe(
      Effect.catchAllCause((cause) => Effect.logError(`session ${sessionId} actor failed`, cause)),
      Effect.asVoid
    )

  /**
   * One actor's whole life. As it ends its stream ends too, and the session
   * unbinds, unless another actor now runs for it (a second stream replaced
   * this one) or the broker is shutting down (the map is closed): then the
   * session stays bound.
   */
  const actor = (
    sessionId: string,
    mailbox: Mailbox.Mailbox<Frame>,
    previous: Option.Option<Fiber.RuntimeFiber<unknown, unknown>>
  ) =>
    Effect.withFiberRuntime<void>((self) =>
      Effect.ensuring(
        // The actor this one replaces was interrupted as this one started:
        // once it is gone, no claim of its can slip past the re-sent frames.
        Effect.zipRight(Option.isSome(previous) ? Fiber.await(previous.value) : Effect.void, run(sessionId, mailbox)),
        Effect.zipRight(
          mailbox.end,
          Effect.suspend(() => {
            const current = FiberMap.unsafeGet(actors, sessionId)
            if (!(Option.isSome(current) && current.value === self)) return Effect.void
            const goodbye = goodbyes.delete(sessionId)
            return unbind(sessionId, goodbye)
          })
        )
      )
    )

  const open = Effect.fn("Sessions.open")(function*(sessionId: string) {
    yield* registry.getSession(sessionId)
    const mailbox = yield* Mailbox.make<Frame>()
    // a second stream replaces the first: running this actor interrupts the old one
    const previous = yield* Effect.option(FiberMap.get(actors, sessionId))
    const fiber = yield* FiberMap.run(actors, sessionId, actor(sessionId, mailbox, previous))
    // the client gone: the actor stops, and unbinds the session unless replaced by then
    yield* Effect.addFinalizer(() => Fiber.interrupt(fiber))
    return Mailbox.toStream(mailbox)
  })

  const close = Effect.fn("Sessions.close")(function*(sessionId: string, reason: CloseReason) {
    // open here: its actor stops and unbinds the session as it goes
    if (yield* FiberMap.has(actors, sessionId)) {
      if (reason === "goodbye") goodbyes.add(sessionId)
      yield* FiberMap.remove(actors, sessionId)
      goodbyes.delete(sessionId)
      return
    }
    yield* unbind(sessionId, reason === "goodbye")
  })

  const heartbeat = Effect.fn("Sessions.heartbeat")(
    function*(sessionId: string, providers: ReadonlyArray<ProviderHealth> = []) {
      yield* registry.getSession(sessionId)
      const changed = yield* registry.reportHealth(sessionId, providers)
      yield* registry.heartbeat(sessionId)
      if (changed.length === 0) return
      yield* poolsChanged(changed)
      // healthy again: the session takes what was queued for the row meanwhile (its pool or pinned to it)
      if (changed.some((row) => row.healthy)) yield* signals.publishSession(sessionId, { _tag: "Look" })
      // gone unhealthy: a member of its pool may now take the tasks it handed back
      yield* Effect.forEach(
        new Set(changed.filter((row) => !row.healthy).map((row) => row.pool)),
        (pool) => signals.wakePool({ pool }),
        { discard: true }
      )
      yield* Effect.logInfo(
        `session ${sessionId}: ${
          changed.map((row) => `${row.name} ${row.healthy ? "healthy" : "unhealthy"}`).join(", ")
        }`
      )
    }
  )

  const isOpen = (sessionId: string) => FiberMap.has(actors, sessionId)

  const closeAllOf = Effect.fn("Sessions.closeAllOf")(function*(principalId: string) {
    const ids = yield* registry.sessionsOf(principalId)
    yield* Effect.forEach(ids, (id) => Effect.zipRight(owners.invalidate(id), close(id, "goodbye")), { discard: true })
    return ids.length
  })

  return { register, authorize, open, close, heartbeat, isOpen, closeAllOf, forget } satisfies SessionsShape
})

export class Sessions extends Context.Tag("llm-relay/Sessions")<Sessions, SessionsShape>() {
  /** Needs the `Registry`, `TaskQueue`, `Signals` and `RelayConfig`. */
  static readonly layer = Layer.scoped(this, make)
}
