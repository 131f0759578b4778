import { HttpApiBuilder } from "@effect/platform"
import { Effect, Schedule, Stream } from "effect"
import { RelayConfig } from "../../config.js"
import type { Frame } from "../../domain/Frames.js"
import { TaskAlreadyTerminal, TaskNotHeld } from "../../domain/Task.js"
import { Limits } from "../../limits/Limits.js"
import { Sessions } from "../../sessions/Sessions.js"
import { TaskQueue } from "../../tasks/TaskQueue.js"
import { RelayApi } from "../Api.js"
import { CurrentPrincipal } from "../Auth.js"
import { replaceLoneSurrogates } from "../groups/storable.js"
import * as Sse from "../Sse.js"

const frameEvent = (frame: Frame): string => {
  const { _tag, ...data } = frame
  return Sse.event(_tag, JSON.stringify(data))
}

export const PublishersLive = HttpApiBuilder.group(RelayApi, "publishers", (handlers) =>
  Effect.gen(function*() {
    const sessions = yield* Sessions
    const queue = yield* TaskQueue
    const config = yield* RelayConfig
    const limits = yield* Limits

    /** The session must exist (404) and be the caller's (403; admin owns all). */
    const ownSession = (sessionId: string) =>
      Effect.flatMap(CurrentPrincipal, (principal) => sessions.authorize(principal, sessionId))

    /**
     * The queue tells "ended" (TaskAlreadyTerminal) from "someone else's"; on
     * the wire both are PROTOCOL's 409 TaskNotHeld: the session holds the task no more.
     */
    const notHeld = <A, E, R>(post: Effect.Effect<A, E | TaskAlreadyTerminal, R>) =>
      Effect.catchIf(
        post,
        (e): e is TaskAlreadyTerminal => e instanceof TaskAlreadyTerminal,
        (e) => Effect.fail(new TaskNotHeld({ message: e.message }))
      )

    return handlers
      .handle("register", ({ payload }) =>
        Effect.flatMap(CurrentPrincipal, (principal) => sessions.register(principal, payload)))
      .handle("stream", ({ path }) =>
        Effect.gen(function*() {
          yield* ownSession(path.sessionId)
          yield* limits.hold("taskStreams", (yield* CurrentPrincipal).id)
          const keepalive = Stream.repeatValue(Sse.comment("keepalive")).pipe(
            Stream.schedule(Schedule.spaced(config.keepaliveInterval))
          )
          // The actor lives in the response stream's scope: when the client goes
          // (or a second stream replaces this one) the scope closes and unbinds.
          const body = Stream.unwrapScoped(
            Effect.map(sessions.open(path.sessionId), (frames) =>
              Stream.concat(
                Stream.make(Sse.event("ready", JSON.stringify({ sessionId: path.sessionId }))),
                Stream.merge(Stream.map(frames, frameEvent), keepalive, { haltStrategy: "left" })
              ))
          )
          return Sse.response(body)
        }))
      .handle("heartbeat", ({ path, payload }) =>
        Effect.gen(function*() {
          yield* ownSession(path.sessionId)
          const reported = Object.entries(payload?.providers ?? {}).map(([name, health]) => ({
            name,
            healthy: health.healthy,
            reason: health.reason ?? null
          }))
          yield* sessions.heartbeat(path.sessionId, reported)
          return { ok: true as const }
        }))
      .handle("goodbye", ({ path }) =>
        Effect.zipRight(ownSession(path.sessionId), sessions.close(path.sessionId, "goodbye")))
      .handle("ack", ({ path, payload }) =>
        Effect.zipRight(ownSession(path.sessionId), notHeld(queue.ack(path.sessionId, path.taskId, payload.attempt))))
      // the upstream's text, lone surrogates replaced by U+FFFD (PROTOCOL.md common rules)
      .handle("chunks", ({ path, payload: raw }) =>
        Effect.zipRight(
          ownSession(path.sessionId),
          notHeld(queue.appendChunks(path.sessionId, path.taskId, replaceLoneSurrogates(raw.chunks), raw.attempt))
        ))
      .handle("result", ({ path, payload: raw }) => {
        const payload = replaceLoneSurrogates(raw)
        return Effect.zipRight(
          ownSession(path.sessionId),
          // no body: a bare 200 (a streamed task's end)
          notHeld(queue.complete(
            path.sessionId,
            path.taskId,
            payload.body === undefined ? { status: payload.status } : { status: payload.status, body: payload.body },
            payload.attempt
          ))
        )
      })
      .handle("error", ({ path, payload: raw }) => {
        const payload = replaceLoneSurrogates(raw)
        return Effect.zipRight(
          ownSession(path.sessionId),
          notHeld(queue.fail(
            path.sessionId,
            path.taskId,
            payload.body === undefined
              ? { message: payload.message, status: payload.status, retry: payload.retry }
              : { message: payload.message, status: payload.status, body: payload.body, retry: payload.retry },
            payload.attempt
          ))
        )
      })
  }))
