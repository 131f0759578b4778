/**
 * The publisher: runs next to a local OpenAI-compatible server (vLLM,
 * llama.cpp server, Ollama) and serves the broker's tasks with it.
 *
 * One connection fiber registers (with a sticky session id), reads the task
 * stream and heartbeats; when the connection drops it reconnects with capped
 * exponential backoff and jitter. Each `task` frame becomes a fiber in a
 * FiberMap keyed by task id: call the upstream (acking if it takes a while) (at most `maxConcurrent`
 * per provider), post chunks in batches, post the result. A `cancel` frame or
 * a 410 interrupts that fiber, which aborts the upstream request. Closing the
 * scope (SIGTERM) stops taking tasks, lets in-flight ones finish (bounded),
 * then says goodbye.
 */
import { HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import {
  Clock,
  Data,
  Duration,
  Effect,
  FiberMap,
  Option,
  Queue,
  Random,
  Ref,
  Schedule,
  type Scope,
  Stream
} from "effect"
import { type Provider, upstreamUrl } from "./Config.js"

export interface PublisherOptions {
  /** The broker's base URL, e.g. http://127.0.0.1:8080. */
  readonly server: string
  /** A token with role publisher (or admin). */
  readonly token: string
  readonly providers: ReadonlyArray<Provider>
  /** Reuse a session id (sticky); one is assigned at the first registration otherwise. */
  readonly sessionId?: string | undefined
  /** How long in-flight tasks may run on shutdown before goodbye (default 30 s). */
  readonly drainTimeout?: Duration.Duration | undefined
  /** Cap of the reconnect backoff (default 30 s). */
  readonly maxBackoff?: Duration.Duration | undefined
  /** A task still running after this is acknowledged explicitly (default 2 s). */
  readonly ackAfter?: Duration.Duration | undefined
}

/** The publisher cannot go on: bad token, a name another session holds at start, bad providers. */
export class PublisherFatal extends Data.TaggedError("PublisherFatal")<{ readonly message: string }> {}

/** This connection is over (stream ended, broker unreachable, session gone): reconnect. */
class Disconnected extends Data.TaggedError("Disconnected")<{ readonly reason: string }> {}

/** The broker no longer wants this task's posts (410 cancelled, 409 not held, 404 gone). */
class TaskStopped extends Data.TaggedError("TaskStopped")<{ readonly status: number; readonly message: string }> {}

interface TaskFrame {
  readonly taskId: string
  readonly attempt: number
  readonly llmName: string
  readonly model: string
  readonly path: string
  readonly streaming: boolean
  readonly body: unknown
}

interface SseEvent {
  readonly event: string
  readonly data: string
}

/** Server-sent events from a stream of lines (comments and unknown fields skipped). */
export const sseEvents = <E, R>(lines: Stream.Stream<string, E, R>): Stream.Stream<SseEvent, E, R> =>
  lines.pipe(
    Stream.mapAccum({ event: "", data: [] as Array<string> }, (state, line): [
      { event: string; data: Array<string> },
      Option.Option<SseEvent>
    ] => {
      if (line === "") {
        return state.data.length === 0 && state.event === ""
          ? [state, Option.none()]
          : [{ event: "", data: [] }, Option.some({ event: state.event || "message", data: state.data.join("\n") })]
      }
      if (line.startsWith(":")) return [state, Option.none()]
      const colon = line.indexOf(":")
      const field = colon === -1 ? line : line.slice(0, colon)
      const value = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /, "")
      if (field === "event") return [{ ...state, event: value }, Option.none()]
      if (field === "data") return [{ ...state, data: [...state.data, value] }, Option.none()]
      return [state, Option.none()]
    }),
    Stream.filterMap((event) => event)
  )

const errorMessageOf = (body: unknown, fallback: string): string => {
  if (typeof body === "object" && body !== null && "error" in body) {
    const error = (body as { error: unknown }).error
    if (typeof error === "string") return error
    if (typeof error === "object" && error !== null && "message" in error) return String(error.message)
  }
  return fallback
}

/**
 * A whole chat or text completion as the one stream chunk that carries all of
 * it (what the upstream would have streamed, in one piece); undefined for
 * anything else.
 */
const wholeAsChunk = (body: unknown): Record<string, unknown> | undefined => {
  if (typeof body !== "object" || body === null) return undefined
  const whole = body as { object?: unknown; choices?: unknown }
  if (!Array.isArray(whole.choices)) return undefined
  type Choice = { index?: number; message?: Record<string, unknown>; text?: string; finish_reason?: unknown; logprobs?: unknown }
  const choices = whole.choices as Array<Choice>
  if (whole.object === "chat.completion") {
    return {
      ...whole,
      object: "chat.completion.chunk",
      choices: choices.map((c, i) => ({ index: c.index ?? i, delta: c.message ?? {}, finish_reason: c.finish_reason ?? null }))
    }
  }
  if (whole.object === "text_completion") return { ...whole }
  return undefined
}

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

export const run = (options: PublisherOptions): Effect.Effect<never, PublisherFatal, HttpClient.HttpClient | Scope.Scope> =>
  Effect.gen(function* () {
    const http = yield* HttpClient.HttpClient
    const server = options.server.replace(/\/+$/, "")
    const drainTimeout = options.drainTimeout ?? Duration.seconds(30)
    // short enough that a restarted broker has its models back within seconds
    const maxBackoff = Duration.toMillis(options.maxBackoff ?? Duration.seconds(5))
    const ackAfter = options.ackAfter ?? Duration.seconds(2)
    const providers = new Map(options.providers.map((p) => [p.name, p] as const))
    const permits = new Map<string, Effect.Semaphore>()
    for (const p of options.providers) permits.set(p.name, yield* Effect.makeSemaphore(p.maxConcurrent))
    const sessionRef = yield* Ref.make(Option.fromNullable(options.sessionId))
    const draining = yield* Ref.make(false)
    const tasks = yield* FiberMap.make<string>()

    /** One call to the broker: its status and parsed body. Transport failures are `Disconnected`. */
    const call = (method: "POST" | "GET" | "DELETE", path: string, body?: unknown) =>
      Effect.gen(function* () {
        let request = HttpClientRequest.make(method)(`${server}${path}`).pipe(HttpClientRequest.bearerToken(options.token))
        if (body !== undefined) request = HttpClientRequest.bodyUnsafeJson(request, body)
        const response = yield* http.execute(request)
        const text = yield* response.text
        return { status: response.status, body: parseJson(text), text }
      }).pipe(
        Effect.catchTags({
          RequestError: (e) => Effect.fail(new Disconnected({ reason: `broker unreachable: ${e.message}` })),
          ResponseError: (e) => Effect.fail(new Disconnected({ reason: `broker answer broken: ${e.message}` }))
        })
      )

    // ---- tasks ----

    /** A publisher post for a task: 204 goes on; 410/409/404 stop the task; other failures retry a little. */
    const post = (sessionId: string, frame: TaskFrame, what: string, body: Record<string, unknown>) =>
      call("POST", `/v1/publishers/sessions/${sessionId}/tasks/${frame.taskId}/${what}`, {
        ...body,
        attempt: frame.attempt
      }).pipe(
        Effect.flatMap((answer): Effect.Effect<void, Disconnected | TaskStopped> =>
          answer.status < 300
            ? Effect.void
            : answer.status === 410 || answer.status === 409 || answer.status === 404
            ? Effect.fail(new TaskStopped({ status: answer.status, message: errorMessageOf(answer.body, answer.text) }))
            : Effect.fail(new Disconnected({ reason: `${what} answered ${answer.status}` }))
        ),
        Effect.retry({
          while: (e: Disconnected | TaskStopped) => e._tag === "Disconnected",
          schedule: Schedule.exponential("100 millis").pipe(Schedule.intersect(Schedule.recurs(5)))
        }),
        Effect.catchTag("Disconnected", (e) => Effect.fail(new TaskStopped({ status: 0, message: e.reason })))
      )

    /** The upstream failed before or instead of answering: tell the broker with its status and message. */
    const upstreamFailure = (response: HttpClientResponse.HttpClientResponse) =>
      Effect.map(Effect.orElseSucceed(response.text, () => ""), (text) => {
        const body = parseJson(text)
        return {
          status: response.status,
          message: errorMessageOf(body, text.slice(0, 500) || `upstream answered ${response.status}`),
          ...(body !== undefined ? { body } : {})
        }
      })

    const relay = (sessionId: string, frame: TaskFrame, provider: Provider) =>
      Effect.gen(function* () {
        const url = upstreamUrl(provider.upstream, frame.path)
        const body = typeof frame.body === "object" && frame.body !== null
          ? { ...(frame.body as Record<string, unknown>), model: provider.model }
          : { model: provider.model }
        let request = HttpClientRequest.post(url).pipe(HttpClientRequest.bodyUnsafeJson(body))
        if (provider.apiKey !== undefined) request = HttpClientRequest.bearerToken(request, provider.apiKey)
        const unreachable = (e: { readonly message: string }) => ({
          status: 502,
          message: `the upstream ${url} is unreachable: ${e.message}`
        })
        const notJson = (status: number, text: string) => ({
          status: 502,
          message: `the upstream ${url} answered ${status} with a body that is not JSON: ${JSON.stringify(text.slice(0, 200))}`
        })
        const response = yield* Effect.either(http.execute(request))
        if (response._tag === "Left") {
          yield* post(sessionId, frame, "error", unreachable(response.left))
          return "error 502"
        }
        const res = response.right
        if (res.status >= 400) {
          const failure = yield* upstreamFailure(res)
          yield* post(sessionId, frame, "error", failure)
          return `error ${res.status}`
        }
        const whole = !frame.streaming || (res.headers["content-type"] ?? "").toLowerCase().includes("application/json")
        if (whole) {
          const text = yield* Effect.either(res.text)
          if (text._tag === "Left") {
            yield* post(sessionId, frame, "error", unreachable(text.left))
            return "error 502"
          }
          const parsed = parseJson(text.right)
          if (parsed === undefined) {
            // an OpenAI-compatible answer is JSON; anything else must not pass for a success
            yield* post(sessionId, frame, "error", notJson(res.status, text.right))
            return "error 502"
          }
          // asked to stream, the upstream answered whole: one chunk holding the
          // whole answer, so a streaming client still reads a stream
          const single = frame.streaming ? wholeAsChunk(parsed) : undefined
          if (single === undefined) {
            yield* post(sessionId, frame, "result", { status: res.status, body: parsed })
          } else {
            yield* post(sessionId, frame, "chunks", { chunks: [JSON.stringify(single)] })
            yield* post(sessionId, frame, "result", { status: res.status })
          }
          return `completed ${res.status}`
        }
        // Streaming: a reader queues the upstream's chunks; a poster sends
        // whatever has queued as one batch per call, so fast tokens share a
        // round trip and a slow token goes out at once.
        const queue = yield* Queue.unbounded<string | null>()
        const reader = res.stream.pipe(
          Stream.decodeText(),
          Stream.splitLines,
          sseEvents,
          Stream.map((event) => event.data),
          Stream.takeWhile((data) => data !== "[DONE]"),
          Stream.runForEach((data) => Queue.offer(queue, data)),
          Effect.mapError(unreachable),
          Effect.ensuring(Queue.offer(queue, null))
        )
        const poster = Effect.gen(function* () {
          while (true) {
            const batch = yield* Queue.takeBetween(queue, 1, 4096)
            const chunks: Array<string> = []
            let ended = false
            for (const item of batch) {
              if (item === null) ended = true
              else chunks.push(item)
            }
            if (chunks.length > 0) yield* post(sessionId, frame, "chunks", { chunks })
            if (ended) return
          }
        })
        const [read] = yield* Effect.all([Effect.either(reader), poster], { concurrency: 2 })
        if (read._tag === "Left") {
          yield* post(sessionId, frame, "error", read.left)
          return "error 502"
        }
        yield* post(sessionId, frame, "result", { status: res.status })
        return `completed ${res.status}`
      })

    const handleTask = (sessionId: string, frame: TaskFrame) =>
      Effect.gen(function* () {
        const started = yield* Clock.currentTimeMillis
        const provider = providers.get(frame.llmName)
        const elapsed = Effect.map(Clock.currentTimeMillis, (now) => `${now - started}ms`)
        const outcome = yield* Effect.gen(function* () {
          if (provider === undefined) {
            yield* post(sessionId, frame, "error", { status: 502, message: `this publisher has no provider '${frame.llmName}'` })
            return "error 502"
          }
          // A chunk or the result counts as the ack: a task that ends quickly
          // needs no ack round trip; a slow one is acked after `ackAfter`
          // (well within the broker's 30 s claim timeout).
          const ackLater = Effect.sleep(ackAfter).pipe(
            Effect.zipRight(post(sessionId, frame, "ack", {})),
            Effect.zipRight(Effect.never)
          )
          return yield* Effect.raceFirst(permits.get(provider.name)!.withPermits(1)(relay(sessionId, frame, provider)), ackLater)
        }).pipe(
          Effect.catchTag("TaskStopped", (e) =>
            Effect.succeed(e.status === 410 ? "cancelled" : `stopped (${e.status || "broker"}: ${e.message})`)),
          Effect.onInterrupt(() =>
            Effect.flatMap(elapsed, (ms) =>
              Effect.logInfo(`task ${frame.taskId} provider=${frame.llmName} cancelled ${ms}`)))
        )
        yield* Effect.logInfo(`task ${frame.taskId} provider=${frame.llmName} ${outcome} ${yield* elapsed}`)
      })

    // ---- the connection ----

    const register = (first: boolean) =>
      Effect.gen(function* () {
        const sessionId = yield* Ref.get(sessionRef)
        const answer = yield* call("POST", "/v1/publishers/sessions", {
          ...(Option.isSome(sessionId) ? { sessionId: sessionId.value } : {}),
          providers: options.providers.map((p) => ({
            name: p.name,
            model: p.model,
            type: "openai",
            maxConcurrent: p.maxConcurrent,
            ...(p.pool !== undefined ? { pool: p.pool } : {}),
            ...(p.tier !== undefined ? { tier: p.tier } : {}),
            ...(p.description !== undefined ? { description: p.description } : {})
          }))
        })
        const message = errorMessageOf(answer.body, answer.text)
        if (answer.status === 401 || answer.status === 403 || answer.status === 400) {
          return yield* new PublisherFatal({ message: `the broker refused the registration (${answer.status}): ${message}` })
        }
        if (answer.status === 409) {
          if (first) return yield* new PublisherFatal({ message: `name conflict: ${message}` })
          return yield* new Disconnected({ reason: `name conflict, retrying: ${message}` })
        }
        if (answer.status >= 300) return yield* new Disconnected({ reason: `registration answered ${answer.status}: ${message}` })
        const registration = answer.body as { sessionId: string; heartbeatIntervalMs: number }
        yield* Ref.set(sessionRef, Option.some(registration.sessionId))
        return registration
      })

    const heartbeat = (sessionId: string, interval: number) =>
      call("POST", `/v1/publishers/sessions/${sessionId}/heartbeat`).pipe(
        Effect.flatMap((answer) =>
          answer.status === 404
            ? Effect.fail(new Disconnected({ reason: "the broker forgot this session" }))
            : Effect.void
        ),
        Effect.catchIf((e) => e.reason.startsWith("broker"), (e) => Effect.logDebug(`heartbeat failed: ${e.reason}`)),
        Effect.repeat(Schedule.spaced(Duration.millis(interval))),
        Effect.zipRight(Effect.never)
      )

    const onFrame = (sessionId: string) => (event: SseEvent) =>
      Effect.gen(function* () {
        if (event.event === "task") {
          const frame = parseJson(event.data) as TaskFrame | undefined
          if (frame === undefined) return
          if (yield* Ref.get(draining)) {
            yield* Effect.logDebug(`task ${frame.taskId} not taken: shutting down (the broker re-queues it at goodbye)`)
            return
          }
          yield* FiberMap.run(tasks, frame.taskId, handleTask(sessionId, frame))
        } else if (event.event === "cancel") {
          const frame = parseJson(event.data) as { taskId: string; reason: string } | undefined
          if (frame !== undefined) {
            yield* Effect.logDebug(`cancel ${frame.taskId}: ${frame.reason}`)
            yield* FiberMap.remove(tasks, frame.taskId)
          }
        }
      })

    /** The task stream, until it ends, goes silent past three keepalives, or fails. */
    const consume = (sessionId: string) =>
      Effect.gen(function* () {
        const response = yield* http.execute(
          HttpClientRequest.get(`${server}/v1/publishers/sessions/${sessionId}/tasks`).pipe(
            HttpClientRequest.bearerToken(options.token),
            HttpClientRequest.setHeader("accept", "text/event-stream")
          )
        )
        if (response.status !== 200) {
          return yield* new Disconnected({ reason: `the task stream answered ${response.status}` })
        }
        yield* response.stream.pipe(
          Stream.decodeText(),
          Stream.splitLines,
          Stream.timeoutFail(() => new Disconnected({ reason: "the task stream went silent" }), Duration.seconds(45)),
          sseEvents,
          Stream.runForEach(onFrame(sessionId))
        )
        return yield* new Disconnected({ reason: "the broker closed the task stream" })
      }).pipe(
        Effect.catchTags({
          RequestError: (e) => Effect.fail(new Disconnected({ reason: `broker unreachable: ${e.message}` })),
          ResponseError: (e) => Effect.fail(new Disconnected({ reason: `task stream broken: ${e.message}` }))
        })
      )

    const connection = Effect.gen(function* () {
      let first = true
      let backoff = 500
      while (true) {
        // stopping (SIGTERM during a backoff): no new registration
        if (yield* Ref.get(draining)) return yield* Effect.never
        const result = yield* Effect.either(
          Effect.gen(function* () {
            const registration = yield* register(first)
            yield* Effect.logInfo(`connected to ${server} as session ${registration.sessionId}`)
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
        if (yield* Ref.get(draining)) return yield* Effect.never
        const reason = result._tag === "Left" && result.left._tag === "Disconnected" ? result.left.reason : "connection ended"
        const jitter = yield* Random.nextRange(0.5, 1)
        const wait = Math.round(Math.min(backoff, maxBackoff) * jitter)
        yield* Effect.logWarning(`disconnected (${reason}); reconnecting in ${wait} ms`)
        yield* Effect.sleep(Duration.millis(wait))
        backoff = Math.min(backoff * 2, maxBackoff)
      }
    })

    const connected = yield* Effect.forkScoped(connection)

    // Runs first when the scope closes: the task stream stays open while
    // in-flight tasks finish (closing it would fail them), then goodbye.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* Ref.set(draining, true)
        const inFlight = yield* FiberMap.size(tasks)
        if (inFlight > 0) yield* Effect.logInfo(`stopping: waiting for ${inFlight} task(s) in flight`)
        // finalizers run uninterruptibly: without `interruptible` the timeout
        // could not cut the wait short, and a hung upstream held the exit
        yield* FiberMap.awaitEmpty(tasks).pipe(Effect.interruptible, Effect.timeout(drainTimeout), Effect.ignore)
        const sessionId = yield* Ref.get(sessionRef)
        if (Option.isSome(sessionId)) {
          yield* call("DELETE", `/v1/publishers/sessions/${sessionId.value}`).pipe(
            Effect.interruptible,
            Effect.timeout(Duration.seconds(5)),
            Effect.tap(() => Effect.logInfo(`goodbye: session ${sessionId.value} closed`)),
            Effect.ignore
          )
        }
      })
    )
    return yield* connected.await.pipe(
      Effect.flatMap((exit) => (exit._tag === "Failure" ? Effect.failCause(exit.cause) : Effect.never))
    )
  })
