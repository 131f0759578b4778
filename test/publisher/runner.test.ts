/**
 * The publisher's TaskRunner on its own: a real upstream (the fake vLLM over
 * HTTP) and a broker stand-in that records every post. A `task` frame sent
 * again for a task it runs (the broker re-sends unacknowledged frames on a
 * new stream) is not a second run; a draining publisher hands frames back.
 */
import { FetchHttpClient, HttpClient } from "@effect/platform"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Stream } from "effect"
import type { TaskFrame } from "../../src/domain/Frames.js"
import type { Broker } from "../../src/publisher/Broker.js"
import type { Provider } from "../../src/publisher/Config.js"
import * as Health from "../../src/publisher/Health.js"
import * as TaskRunner from "../../src/publisher/TaskRunner.js"
import { startFakeUpstream } from "../support/fakeUpstream.js"

interface Posted {
  readonly taskId: string
  readonly what: string
  readonly body: Record<string, unknown>
}

/** A broker that takes every post (204) and remembers it. */
const recordingBroker = (posts: Array<Posted>): Broker => ({
  server: "http://broker.invalid",
  register: () => Effect.die("not used"),
  heartbeat: () => Effect.succeed("alive" as const),
  taskEvents: () => Stream.empty,
  postTask: (_sessionId, taskId, what, body) => Effect.sync(() => void posts.push({ taskId, what, body })),
  goodbye: () => Effect.void
})

const frame = (taskId: string, attempt: number): TaskFrame => ({
  _tag: "task",
  kind: "infer",
  taskId,
  attempt,
  llmName: "local",
  model: "m",
  path: "/v1/chat/completions",
  streaming: false,
  body: { model: "local", messages: [{ role: "user", content: taskId }] }
})

const withRunner = <A, E>(
  delayMs: number,
  body: (runner: TaskRunner.TaskRunner, posts: Array<Posted>, received: () => number) => Effect.Effect<A, E>
) =>
  Effect.gen(function*() {
    const fake = yield* Effect.acquireRelease(
      Effect.promise(() => startFakeUpstream({ delayMs })),
      (f) => Effect.promise(() => f.close())
    )
    const http = yield* HttpClient.HttpClient
    const provider: Provider = { name: "local", upstream: fake.baseUrl, model: "m", maxConcurrent: 4 }
    const health = yield* Health.make(http, [provider])
    const posts: Array<Posted> = []
    const runner = yield* TaskRunner.make(http, recordingBroker(posts), health, {
      providers: [provider],
      ackAfter: Duration.seconds(2),
      reportHealth: Effect.void
    })
    return yield* body(runner, posts, () => fake.received.length)
  }).pipe(Effect.scoped, Effect.provide(FetchHttpClient.layer))

/** Real time passes until `check` holds. */
const until = (check: () => boolean, what: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 250; i++) {
      if (check()) return
      yield* Effect.sleep("20 millis")
    }
    assert.fail(`timed out waiting for ${what}`)
  })

describe("the publisher's TaskRunner", () => {
  it.live("a frame sent again for a task it runs (same attempt) is ignored: one upstream call, one result", () =>
    withRunner(300, (runner, posts, received) =>
      Effect.gen(function*() {
        yield* runner.start("session-1", frame("task-a", 1))
        yield* until(() => received() === 1, "the upstream call")
        yield* runner.start("session-1", frame("task-a", 1)) // re-sent on a new stream
        yield* until(() => posts.some((p) => p.what === "result"), "the result")
        yield* Effect.sleep("300 millis")
        assert.strictEqual(received(), 1)
        assert.deepStrictEqual(posts.filter((p) => p.what === "result").map((p) => p.body.attempt), [1])
        // a new attempt of the same task is a new run
        yield* runner.start("session-1", frame("task-a", 2))
        yield* until(() => posts.filter((p) => p.what === "result").length === 2, "the second attempt's result")
        assert.strictEqual(received(), 2)
      })))

  it.live("draining: a frame that still comes is handed back at once with retry, the upstream never called", () =>
    withRunner(0, (runner, posts, received) =>
      Effect.gen(function*() {
        yield* runner.stop
        yield* runner.start("session-1", frame("task-b", 3))
        yield* until(() => posts.length === 1, "the hand-back")
        assert.strictEqual(posts[0]!.what, "error")
        assert.strictEqual(posts[0]!.body.retry, true)
        assert.strictEqual(posts[0]!.body.attempt, 3)
        assert.strictEqual(received(), 0)
      })))
})
