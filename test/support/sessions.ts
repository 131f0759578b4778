/**
 * Helpers for tests that drive session actors and synchronous calls through
 * the broker's services (real PostgreSQL, TestClock): open a session's task
 * stream, take its task frames, make a call as the OpenAI routes do.
 */
import { assert } from "@effect/vitest"
import { Duration, Effect, Option, Queue, Scope, Stream, TestServices } from "effect"
import type { Frame } from "../../src/domain/Frames.js"
import { Sessions } from "../../src/sessions/Sessions.js"
import { type Answer, Destination, Relay } from "../../src/tasks/Relay.js"
import { live } from "./tasks.js"

/** Lets real time pass, for asserting that something did NOT happen. */
export const settle = TestServices.provideLive(Effect.sleep("300 millis"))

/** Real time passes (actors and guards do real SQL) until `check` holds. */
export const eventually = <E, R>(check: Effect.Effect<boolean, E, R>, what: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 250; i++) {
      if (yield* check) return
      yield* TestServices.provideLive(Effect.sleep("20 millis"))
    }
    return assert.fail(`timed out waiting for ${what}`)
  })

/** Opens a session's task stream in `scope`; its frames land in a queue. */
export const openStream = (sessionId: string, scope: Scope.Scope) =>
  Effect.gen(function*() {
    const sessions = yield* Sessions
    const frames = yield* Queue.unbounded<Frame>()
    const stream = yield* Scope.extend(sessions.open(sessionId), scope)
    const fiber = yield* Effect.forkIn(Stream.runForEach(stream, (frame) => Queue.offer(frames, frame)), scope)
    return { frames, fiber }
  })

/** The next task frame of a stream (real time). */
export const nextTask = (frames: Queue.Queue<Frame>) =>
  live(
    Effect.gen(function*() {
      while (true) {
        const frame = yield* Queue.take(frames)
        if (frame._tag === "task") return frame
      }
    }),
    "a task frame"
  )

/** A synchronous call as the OpenAI routes make it, in the caller's scope. */
export const call = (model: string, options: { readonly stream?: boolean; readonly maxWaitSeconds?: number } = {}) =>
  Effect.gen(function*() {
    const relay = yield* Relay
    const destination = yield* relay.destination(model)
    if (!Destination.$is("Queue")(destination)) return assert.fail("expected a queued destination")
    return (yield* relay.call({
      ownerId: "client-1",
      path: "/v1/chat/completions",
      body: { model, messages: [{ role: "user", content: "hi" }], ...(options.stream ? { stream: true } : {}) },
      route: destination.route,
      maxWait: options.maxWaitSeconds === undefined
        ? Option.none()
        : Option.some(Duration.seconds(options.maxWaitSeconds)),
      timeout: Option.none()
    })) as Answer
  })
