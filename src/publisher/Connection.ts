/**
 * The publisher's connection to the broker: register (the session id sticky
 * across reconnects), read the task stream while heartbeating (each heartbeat
 * carries the providers' upstream health), and when that
 * ends register again after a capped exponential backoff with jitter. Only a
 * fatal answer (bad token, a name another session holds at start) ends it.
 */
import { Duration, Effect, Either, Option, Random, Ref, Schema, Stream } from "effect"
import { describeParseError } from "../domain/Errors.js"
import { Frame } from "../domain/Frames.js"
import type { RegisterRequest } from "../domain/Llm.js"
import { parseJson } from "./Answer.js"
import { type Broker, Disconnected, type PublisherFatal } from "./Broker.js"
import type { Provider } from "./Config.js"
import type { Health } from "./Health.js"
import type { SseEvent } from "./Sse.js"

export interface ConnectionOptions {
  readonly providers: ReadonlyArray<Provider>
  /** Reuse this session id; one is assigned at the first registration otherwise. */
  readonly sessionId: string | undefined
  /** Cap of the reconnect backoff. */
  readonly maxBackoff: Duration.Duration
  /** True once the publisher is stopping: no registration from then on. */
  readonly stopping: Effect.Effect<boolean>
  /** Each task or cancel frame of the task stream, in order. */
  readonly onFrame: (sessionId: string, frame: Frame) => Effect.Effect<void>
  /** The providers' upstream health, reported in every heartbeat (and at once when it changes). */
  readonly health: Health
}

export interface Connection {
  /** Connects and stays connected; fails only with what is fatal. */
  readonly run: Effect.Effect<never, PublisherFatal>
  /** Closes the session at the broker, if there is one (bounded, errors ignored). */
  readonly goodbye: Effect.Effect<void>
  /** Sends a heartbeat with the current health now, if there is a session (bounded, errors ignored). */
  readonly reportHealth: Effect.Effect<void>
}

const decodeFrame = Schema.decodeUnknownEither(Frame)

/** A task stream event as a frame: the event name is its tag, the data the rest of it as JSON. */
const frameOf = (event: SseEvent) => {
  const data = parseJson(event.data)
  return decodeFrame(typeof data === "object" && data !== null ? { ...data, _tag: event.event } : data)
}

export const make = (broker: Broker, options: ConnectionOptions): Effect.Effect<Connection> =>
  Effect.gen(function*() {
    const maxBackoff = Duration.toMillis(options.maxBackoff)
    const sessionRef = yield* Ref.make(Option.fromNullable(options.sessionId))
    const providers = options.providers.map((p) => ({
      name: p.name,
      model: p.model,
      type: "openai",
      maxConcurrent: p.maxConcurrent,
      ...(p.pool !== undefined ? { pool: p.pool } : {}),
      ...(p.tier !== undefined ? { tier: p.tier } : {}),
      ...(p.description !== undefined ? { description: p.description } : {})
    }))

    const register = (first: boolean) =>
      Effect.gen(function*() {
        const sessionId = yield* Ref.get(sessionRef)
        const request: typeof RegisterRequest.Encoded = {
          ...(Option.isSome(sessionId) ? { sessionId: sessionId.value } : {}),
          providers
        }
        const registration = yield* broker.register(request, first)
        yield* Ref.set(sessionRef, Option.some(registration.sessionId))
        return registration
      })

    /** One heartbeat with the providers' health; fails when the broker forgot the session. */
    const beat = (sessionId: string) =>
      Effect.flatMap(options.health.report, (report) => broker.heartbeat(sessionId, report)).pipe(
        Effect.catchAll((e) => Effect.as(Effect.logDebug(`heartbeat failed: ${e.reason}`), "alive" as const)),
        Effect.flatMap((answer) =>
          answer === "forgotten"
            ? Effect.fail(new Disconnected({ reason: "the broker forgot this session" }))
            : Effect.void
        )
      )

    /**
     * Heartbeats until the broker forgets the session: one at once (a
     * registration made every provider healthy again at the broker), then
     * every interval — probing the upstreams nobody heard from in that long
     * first — and at once whenever a provider's health changes. A heartbeat
     * that does not get through is only logged.
     */
    const heartbeat = (sessionId: string, interval: number) =>
      Effect.gen(function*() {
        const every = Duration.millis(interval)
        while (true) {
          yield* beat(sessionId)
          const changed = yield* options.health.changed.pipe(Effect.timeout(every), Effect.option)
          if (Option.isNone(changed)) yield* options.health.check(every)
        }
      })

    const onEvent = (sessionId: string) => (event: SseEvent) => {
      if (event.event !== "task" && event.event !== "cancel") return Effect.void
      const frame = frameOf(event)
      return Either.isRight(frame)
        ? options.onFrame(sessionId, frame.right)
        : Effect.logWarning(`a ${event.event} frame that does not read as one: ${describeParseError(frame.left)}`)
    }

    /** The task stream, until it ends, goes silent or fails. */
    const consume = (sessionId: string) =>
      Effect.zipRight(
        Stream.runForEach(broker.taskEvents(sessionId), onEvent(sessionId)),
        Effect.fail(new Disconnected({ reason: "the broker closed the task stream" }))
      )

    const run = Effect.gen(function*() {
      let first = true
      let backoff = 500
      while (true) {
        // stopping (SIGTERM during a backoff): no new registration
        if (yield* options.stopping) return yield* Effect.never
        const result = yield* Effect.either(
          Effect.gen(function*() {
            const registration = yield* register(first)
            yield* Effect.logInfo(`connected to ${broker.server} as session ${registration.sessionId}`)
            first = false
            backoff = 500
            return yield* Effect.raceFirst(
              consume(registration.sessionId),
              heartbeat(registration.sessionId, registration.heartbeatIntervalMs)
            )
          })
        )
        if (result._tag === "Left" && result.left._tag === "PublisherFatal") return yield* result.left
        // stopping: the goodbye closed the stream; nothing to reconnect to
        if (yield* options.stopping) return yield* Effect.never
        const reason = result._tag === "Left" && result.left._tag === "Disconnected"
          ? result.left.reason
          : "connection ended"
        const jitter = yield* Random.nextRange(0.5, 1)
        const wait = Math.round(Math.min(backoff, maxBackoff) * jitter)
        yield* Effect.logWarning(`disconnected (${reason}); reconnecting in ${wait} ms`)
        yield* Effect.sleep(Duration.millis(wait))
        backoff = Math.min(backoff * 2, maxBackoff)
      }
    })

    const goodbye = Effect.gen(function*() {
      const sessionId = yield* Ref.get(sessionRef)
      if (Option.isNone(sessionId)) return
      yield* broker.goodbye(sessionId.value).pipe(
        Effect.interruptible,
        Effect.timeout(Duration.seconds(5)),
        Effect.tap(() => Effect.logInfo(`goodbye: session ${sessionId.value} closed`)),
        Effect.ignore
      )
    })

    const reportHealth = Effect.gen(function*() {
      const sessionId = yield* Ref.get(sessionRef)
      if (Option.isNone(sessionId)) return
      yield* beat(sessionId.value).pipe(Effect.interruptible, Effect.timeout(Duration.seconds(5)), Effect.ignore)
    })

    return { run, goodbye, reportHealth }
  })
