/**
 * What the publisher knows of its providers' upstreams, for the heartbeat
 * body (PROTOCOL.md v1.1): a provider is unhealthy when its upstream could
 * not be reached — by a task (connection refused, DNS failure, no answer) or
 * by a probe (`GET <upstream>/models`), which runs at start and, every
 * heartbeat interval, for each provider no task has heard from in that
 * long. Any HTTP answer below 500 counts as reachable. Draining marks every
 * provider unhealthy for good, so that nothing new comes.
 */
import { type HttpClient, HttpClientRequest } from "@effect/platform"
import { Clock, Duration, Effect, Queue } from "effect"
import { joinUpstream } from "../domain/Url.js"
import type { Provider } from "./Config.js"
import { transportCause } from "./Upstream.js"

/** One provider's health as the heartbeat body carries it. */
export interface ProviderHealth {
  readonly healthy: boolean
  readonly reason: string | null
}

export interface Health {
  /** Every provider's health, by name: the heartbeat body's `providers`. */
  readonly report: Effect.Effect<Record<string, ProviderHealth>>
  /** A task found the upstream unreachable. */
  readonly down: (name: string, reason: string) => Effect.Effect<void>
  /** A task got an answer from the upstream: it is reachable. */
  readonly answered: (name: string) => Effect.Effect<void>
  /** Probes each provider nobody heard from within `idle` (each one when `idle` is zero). */
  readonly check: (idle: Duration.Duration) => Effect.Effect<void>
  /** Waits until some provider's health changed since the last wait (one waiter at a time). */
  readonly changed: Effect.Effect<void>
  /** Draining: every provider unhealthy from now on. */
  readonly shutdown: (reason: string) => Effect.Effect<void>
}

interface State {
  healthy: boolean
  reason: string | null
  /** When the upstream last answered (a task or a probe), epoch ms. */
  heardAt: number
}

const PROBE_TIMEOUT = Duration.seconds(5)

export const make = (http: HttpClient.HttpClient, providers: ReadonlyArray<Provider>): Effect.Effect<Health> =>
  Effect.gen(function*() {
    const states = new Map<string, State>(providers.map((p) => [p.name, { healthy: true, reason: null, heardAt: 0 }]))
    const changes = yield* Queue.sliding<void>(1)
    let stopped = false

    const set = (name: string, healthy: boolean, reason: string | null) =>
      Effect.gen(function*() {
        const state = states.get(name)
        if (state === undefined || (stopped && healthy)) return
        if (healthy) state.heardAt = yield* Clock.currentTimeMillis
        if (state.healthy === healthy && state.reason === reason) return
        state.healthy = healthy
        state.reason = reason
        yield* healthy
          ? Effect.logInfo(`provider ${name}: upstream reachable again`)
          : Effect.logWarning(`provider ${name}: upstream unhealthy (${reason})`)
        yield* Queue.offer(changes, undefined)
      })

    /** GET <upstream>/models: any answer below 500 is a reachable upstream. */
    const probe = (provider: Provider) =>
      Effect.gen(function*() {
        let request = HttpClientRequest.get(joinUpstream(provider.upstream, "/v1/models"))
        if (provider.apiKey !== undefined) request = HttpClientRequest.bearerToken(request, provider.apiKey)
        const answer = yield* http.execute(request).pipe(
          Effect.flatMap((response) => Effect.as(Effect.ignore(response.text), response.status)),
          Effect.timeout(PROBE_TIMEOUT),
          Effect.either
        )
        if (answer._tag === "Left") {
          const reason = answer.left._tag === "TimeoutException"
            ? `no answer to GET /models within ${Duration.format(PROBE_TIMEOUT)}`
            : transportCause(answer.left)
          return yield* set(provider.name, false, reason)
        }
        return yield* answer.right < 500
          ? set(provider.name, true, null)
          : set(provider.name, false, `GET /models answered ${answer.right}`)
      })

    const check: Health["check"] = (idle) =>
      Effect.gen(function*() {
        if (stopped) return
        const now = yield* Clock.currentTimeMillis
        const due = providers.filter((p) => {
          const state = states.get(p.name)!
          return !state.healthy || now - state.heardAt >= Duration.toMillis(idle)
        })
        yield* Effect.forEach(due, probe, { concurrency: "unbounded", discard: true })
      })

    const report = Effect.sync(() =>
      Object.fromEntries([...states].map(([name, s]) => [name, { healthy: s.healthy, reason: s.reason }]))
    )

    const shutdown: Health["shutdown"] = (reason) =>
      Effect.gen(function*() {
        stopped = true
        for (const state of states.values()) {
          state.healthy = false
          state.reason = reason
        }
        yield* Queue.offer(changes, undefined)
      })

    return {
      report,
      down: (name, reason) => set(name, false, reason),
      answered: (name) => set(name, true, null),
      check,
      changed: Queue.take(changes),
      shutdown
    }
  })
