/**
 * The publisher's tasks: each `task` frame becomes a fiber in a FiberMap
 * keyed by task id that calls the upstream (at most `maxConcurrent` at once
 * per provider, acking if it takes a while), posts the chunks in batches and
 * posts the result or the error. A `cancel` frame or a 410 interrupts that
 * fiber, which aborts the upstream request. An upstream that cannot be
 * reached before any output hands the task back (`POST error` with `retry`)
 * for another member, and marks the provider unhealthy. A frame for a task
 * already running (same attempt, re-sent on a new stream) is ignored.
 * Draining stops taking tasks — each frame that still comes is handed back
 * at once — and waits (bounded) for those in flight.
 */
import type { HttpClient } from "@effect/platform"
import { Clock, type Duration, Effect, FiberMap, Queue, Ref, type Scope } from "effect"
import type { CancelFrame, TaskFrame } from "../domain/Frames.js"
import type { Broker, TaskPost, TaskStopped } from "./Broker.js"
import type { Provider } from "./Config.js"
import type { Health } from "./Health.js"
import * as Upstream from "./Upstream.js"

export interface TaskRunner {
  /** Runs a task (while draining: hands it back at once). */
  readonly start: (sessionId: string, frame: TaskFrame) => Effect.Effect<void>
  /** Stops taking tasks: frames from now on are handed back. */
  readonly stop: Effect.Effect<void>
  /** Interrupts a task's fiber, if it still runs. */
  readonly cancel: (frame: CancelFrame) => Effect.Effect<void>
  /** True once draining began. */
  readonly draining: Effect.Effect<boolean>
  /** Stops taking tasks and waits up to `timeout` for those in flight. */
  readonly drain: (timeout: Duration.Duration) => Effect.Effect<void>
}

type Post = (what: TaskPost, body: Record<string, unknown>) => Effect.Effect<void, TaskStopped>

export const make = (
  http: HttpClient.HttpClient,
  broker: Broker,
  health: Health,
  options: {
    readonly providers: ReadonlyArray<Provider>
    readonly ackAfter: Duration.Duration
    /** Sends the providers' health to the broker now (a heartbeat), bounded, errors ignored. */
    readonly reportHealth: Effect.Effect<void>
  }
): Effect.Effect<TaskRunner, never, Scope.Scope> =>
  Effect.gen(function*() {
    /** The attempt each running task serves: a frame re-sent for it is not a second run. */
    const attempts = new Map<string, number>()
    const providers = new Map(options.providers.map((p) => [p.name, p] as const))
    const permits = new Map<string, Effect.Semaphore>()
    for (const p of options.providers) permits.set(p.name, yield* Effect.makeSemaphore(p.maxConcurrent))
    const draining = yield* Ref.make(false)
    const tasks = yield* FiberMap.make<string>()
    const scope = yield* Effect.scope

    /** Calls the upstream and posts what it answers; the outcome for the log. */
    const relay = (post: Post, frame: TaskFrame, provider: Provider) =>
      Effect.gen(function*() {
        const answer = yield* Upstream.call(http, provider, frame)
        if (answer._tag === "Unreachable") {
          yield* health.down(provider.name, answer.cause)
          // the broker learns the provider is unhealthy before it gets the task
          // back, or it could hand it straight back here for another attempt
          yield* options.reportHealth
          yield* post("error", { ...answer.failure, retry: true })
          return `handed back: upstream unreachable (${answer.cause})`
        }
        yield* health.answered(provider.name)
        if (answer._tag === "Failed") {
          yield* post("error", answer.failure)
          return `error ${answer.failure.status}`
        }
        if (answer._tag === "Whole") {
          // asked to stream, the upstream answered whole: one chunk holding the
          // whole answer, so a streaming client still reads a stream
          const single = frame.streaming ? Upstream.wholeAsChunk(answer.body) : undefined
          if (single === undefined) {
            yield* post("result", { status: answer.status, body: answer.body })
          } else {
            yield* post("chunks", { chunks: [JSON.stringify(single)] })
            yield* post("result", { status: answer.status })
          }
          return `completed ${answer.status}`
        }
        // Streaming: a reader queues the upstream's chunks; a poster sends
        // whatever has queued as one batch per call, so fast tokens share a
        // round trip and a slow token goes out at once.
        const queue = yield* Queue.unbounded<string | null>()
        const reader = answer.forEachData((data) => Queue.offer(queue, data)).pipe(
          Effect.ensuring(Queue.offer(queue, null))
        )
        const poster = Effect.gen(function*() {
          while (true) {
            const batch = yield* Queue.takeBetween(queue, 1, 4096)
            const chunks: Array<string> = []
            let ended = false
            for (const item of batch) {
              if (item === null) ended = true
              else chunks.push(item)
            }
            if (chunks.length > 0) yield* post("chunks", { chunks })
            if (ended) return
          }
        })
        const [read] = yield* Effect.all([Effect.either(reader), poster], { concurrency: 2 })
        if (read._tag === "Left") {
          yield* post("error", read.left)
          return `error ${read.left.status}`
        }
        yield* post("result", { status: answer.status })
        return `completed ${answer.status}`
      })

    const run = (sessionId: string, frame: TaskFrame) =>
      Effect.gen(function*() {
        const started = yield* Clock.currentTimeMillis
        const provider = providers.get(frame.llmName)
        const elapsed = Effect.map(Clock.currentTimeMillis, (now) => `${now - started}ms`)
        const post: Post = (what, body) =>
          broker.postTask(sessionId, frame.taskId, what, { ...body, attempt: frame.attempt })
        const outcome = yield* Effect.gen(function*() {
          const permit = provider === undefined ? undefined : permits.get(provider.name)
          if (provider === undefined || permit === undefined) {
            yield* post("error", { status: 502, message: `this publisher has no provider '${frame.llmName}'` })
            return "error 502"
          }
          // A chunk or the result counts as the ack: a task that ends quickly
          // needs no ack round trip; a slow one is acked after `ackAfter`
          // (well within the broker's 30 s claim timeout).
          const ackLater = Effect.sleep(options.ackAfter).pipe(
            Effect.zipRight(post("ack", {})),
            Effect.zipRight(Effect.never)
          )
          return yield* Effect.raceFirst(permit.withPermits(1)(relay(post, frame, provider)), ackLater)
        }).pipe(
          Effect.catchTag(
            "TaskStopped",
            (e) => Effect.succeed(e.status === 410 ? "cancelled" : `stopped (${e.status || "broker"}: ${e.message})`)
          ),
          Effect.onInterrupt(() =>
            Effect.flatMap(
              elapsed,
              (ms) => Effect.logInfo(`task ${frame.taskId} provider=${frame.llmName} cancelled ${ms}`)
            )
          )
        )
        yield* Effect.logInfo(`task ${frame.taskId} provider=${frame.llmName} ${outcome} ${yield* elapsed}`)
      })

    /** A task this publisher will not run goes back to the broker at once, for another member. */
    const handBack = (sessionId: string, frame: TaskFrame, why: string) =>
      broker.postTask(sessionId, frame.taskId, "error", {
        message: `the publisher ${why}`,
        status: 503,
        retry: true,
        attempt: frame.attempt
      }).pipe(
        Effect.tap(() => Effect.logInfo(`task ${frame.taskId} provider=${frame.llmName} handed back: ${why}`)),
        Effect.catchAll((e) => Effect.logDebug(`task ${frame.taskId}: hand-back not taken (${e.message})`))
      )

    const start: TaskRunner["start"] = (sessionId, frame) =>
      Effect.gen(function*() {
        if (yield* Ref.get(draining)) {
          yield* Effect.forkIn(handBack(sessionId, frame, "is shutting down"), scope)
          return
        }
        if (attempts.get(frame.taskId) === frame.attempt && (yield* FiberMap.has(tasks, frame.taskId))) {
          yield* Effect.logDebug(`task ${frame.taskId} attempt ${frame.attempt} already runs: frame ignored`)
          return
        }
        attempts.set(frame.taskId, frame.attempt)
        const forget = Effect.sync(() => {
          if (attempts.get(frame.taskId) === frame.attempt) attempts.delete(frame.taskId)
        })
        yield* FiberMap.run(tasks, frame.taskId, Effect.ensuring(run(sessionId, frame), forget))
      })

    const cancel: TaskRunner["cancel"] = (frame) =>
      Effect.zipRight(
        Effect.logDebug(`cancel ${frame.taskId}: ${frame.reason}`),
        FiberMap.remove(tasks, frame.taskId)
      )

    const drain: TaskRunner["drain"] = (timeout) =>
      Effect.gen(function*() {
        yield* Ref.set(draining, true)
        const inFlight = yield* FiberMap.size(tasks)
        if (inFlight > 0) yield* Effect.logInfo(`stopping: waiting for ${inFlight} task(s) in flight`)
        // finalizers run uninterruptibly: without `interruptible` the timeout
        // could not cut the wait short, and a hung upstream held the exit
        yield* FiberMap.awaitEmpty(tasks).pipe(Effect.interruptible, Effect.timeout(timeout), Effect.ignore)
      })

    return { start, stop: Ref.set(draining, true), cancel, draining: Ref.get(draining), drain }
  })
