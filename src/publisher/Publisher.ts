/**
 * The publisher: runs next to a local OpenAI-compatible server (vLLM,
 * llama.cpp server, Ollama) and serves the broker's tasks with it.
 *
 * Composed of the broker client (`Broker.ts`), one connection fiber that
 * registers (with a sticky session id), reads the task stream and heartbeats,
 * reconnecting with capped exponential backoff and jitter (`Connection.ts`),
 * and the task runner that serves each task with the upstream
 * (`TaskRunner.ts`, `Upstream.ts`), and the upstreams' health that every
 * heartbeat reports (`Health.ts`). Closing the scope (SIGTERM) stops taking
 * tasks, reports every provider unhealthy, lets in-flight ones finish
 * (bounded), then says goodbye.
 */
import { HttpClient } from "@effect/platform"
import { Duration, Effect, type Scope } from "effect"
import * as Broker from "./Broker.js"
import type { Provider } from "./Config.js"
import * as Connection from "./Connection.js"
import * as Health from "./Health.js"
import * as TaskRunner from "./TaskRunner.js"

export { PublisherFatal } from "./Broker.js"
export { type SseEvent, sseEvents } from "./Sse.js"

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
  /** Cap of the reconnect backoff (default 5 s: a restarted broker has its models back within seconds). */
  readonly maxBackoff?: Duration.Duration | undefined
  /** A task still running after this is acknowledged explicitly (default 2 s). */
  readonly ackAfter?: Duration.Duration | undefined
}

export const run = (
  options: PublisherOptions
): Effect.Effect<never, Broker.PublisherFatal, HttpClient.HttpClient | Scope.Scope> =>
  Effect.gen(function*() {
    const http = yield* HttpClient.HttpClient
    const drainTimeout = options.drainTimeout ?? Duration.seconds(30)
    const broker = Broker.make(http, options.server, options.token)
    const health = yield* Health.make(http, options.providers)
    const runner = yield* TaskRunner.make(http, broker, health, {
      providers: options.providers,
      ackAfter: options.ackAfter ?? Duration.seconds(2),
      // the connection is made next; a task runs only once it is there
      reportHealth: Effect.suspend((): Effect.Effect<void> => connection.reportHealth)
    })
    const connection: Connection.Connection = yield* Connection.make(broker, {
      providers: options.providers,
      sessionId: options.sessionId,
      maxBackoff: options.maxBackoff ?? Duration.seconds(5),
      stopping: runner.draining,
      onFrame: (sessionId, frame) => frame._tag === "task" ? runner.start(sessionId, frame) : runner.cancel(frame),
      health
    })
    // the upstreams are probed at start; a change is reported at once
    yield* Effect.forkScoped(health.check(Duration.zero))
    const connected = yield* Effect.forkScoped(connection.run)

    // Runs first when the scope closes: no new tasks (a frame that still
    // comes is handed back), the providers reported unhealthy so that nothing
    // new is dispatched here, then the task stream stays open while in-flight
    // tasks finish (closing it would fail them), then goodbye.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        yield* runner.stop
        yield* health.shutdown("the publisher is shutting down")
        yield* connection.reportHealth
        yield* runner.drain(drainTimeout)
        yield* connection.goodbye
      })
    )
    return yield* connected.await.pipe(
      Effect.flatMap((exit) => (exit._tag === "Failure" ? Effect.failCause(exit.cause) : Effect.never))
    )
  })
