/**
 * The OpenAI-compatible routes. Each inference call is a TaskWaiter: enqueue a
 * durable task, then wait on its events with a timeout. The client leaving
 * (interruption) or the timeout cancels the task, which sends `cancel` to the
 * holder.
 */
import { HttpApiBuilder, type HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Chunk, Duration, Effect, Option, Ref, Scope, Exit, Stream } from "effect"
import { RelayConfig } from "../../config.js"
import { BadRequest } from "../../domain/Errors.js"
import type { Llm } from "../../domain/Llm.js"
import { ModelNotFound, PublisherOffline, type Task, type TaskPath } from "../../domain/Task.js"
import type { Principal } from "../../domain/Token.js"
import { Registry } from "../../registry/Registry.js"
import { TaskQueue } from "../../tasks/TaskQueue.js"
import { RelayApi } from "../Api.js"
import { CurrentPrincipal } from "../Auth.js"
import { errorResponse, toWire, wireError } from "../Errors.js"
import * as Sse from "../Sse.js"
import { proxyPublic } from "./proxy.js"

const TASK_HEADER = "x-relay-task-id"

/** A positive number of seconds from a header, or None; anything else is a BadRequest naming it. */
const secondsHeader = (request: HttpServerRequest.HttpServerRequest, name: string) => {
  const raw = request.headers[name.toLowerCase()]
  if (raw === undefined || raw.trim() === "") return Effect.succeed(Option.none<Duration.Duration>())
  const seconds = Number(raw)
  return Number.isFinite(seconds) && seconds >= 0 && seconds <= 86_400
    ? Effect.succeed(Option.some(Duration.millis(Math.round(seconds * 1000))))
    : Effect.fail(new BadRequest({ message: `${name} must be a number of seconds from 0 to 86400, got '${raw}'` }))
}

/**
 * The whole answer of a finished non-streaming task: its status and body, as
 * they came. A result with no body has nothing an SDK could read: that is the
 * publisher's failure, a 502 saying so, not an empty success.
 */
const taskResponse = (task: Task, headers: Record<string, string>) =>
  task.responseBody === null
    ? errorResponse(502, "UpstreamError", `the publisher finished task '${task.id}' without a body`).pipe(
      HttpServerResponse.setHeaders(headers)
    )
    : HttpServerResponse.unsafeJson(task.responseBody, { status: task.responseStatus ?? 200, headers })

const failureResponse = (error: unknown, headers: Record<string, string>) =>
  Option.match(toWire(error), {
    onNone: () => Effect.die(error),
    onSome: (w) => Effect.succeed(errorResponse(w.status, w.type, w.message).pipe(HttpServerResponse.setHeaders(headers)))
  })

const errorFrame = (error: unknown): string => {
  const wire = Option.getOrElse(toWire(error), () => ({ type: "InternalError", message: "the relay failed" }))
  return Sse.event(undefined, JSON.stringify(wireError(wire.type, wire.message)))
}

export const OpenAiLive = HttpApiBuilder.group(RelayApi, "openai", (handlers) =>
  Effect.gen(function* () {
    const registry = yield* Registry
    const queue = yield* TaskQueue
    const config = yield* RelayConfig

    /**
     * With `X-Relay-Max-Wait` and no publisher online, the task waits queued;
     * if nobody has claimed it when the wait runs out it is cancelled: 503.
     */
    const awaitClaim = (taskId: string, maxWait: Duration.Duration) =>
      Effect.gen(function* () {
        const deadline = (yield* Effect.clockWith((c) => c.currentTimeMillis)) + Duration.toMillis(maxWait)
        while (true) {
          const task = yield* queue.get(taskId)
          if (Option.isNone(task) || task.value.status !== "pending") return
          const left = deadline - (yield* Effect.clockWith((c) => c.currentTimeMillis))
          if (left <= 0) {
            yield* queue.cancel(taskId, "no publisher came online within X-Relay-Max-Wait")
            return yield* new PublisherOffline({ message: "no publisher serving this model came online in time" })
          }
          yield* Effect.sleep(Duration.millis(Math.min(left, 100)))
        }
      })

    const relayVirtual = (
      principal: Principal,
      path: TaskPath,
      body: Record<string, unknown>,
      request: HttpServerRequest.HttpServerRequest,
      rows: ReadonlyArray<Llm>
    ) =>
      Effect.gen(function* () {
        const maxWait = yield* secondsHeader(request, "X-Relay-Max-Wait")
        const timeout = Option.getOrElse(yield* secondsHeader(request, "X-Relay-Timeout"), () => config.syncTimeout)
        const model = String(body.model)
        const route = yield* queue.route(model, rows)
        const online = route.online
        if (!online && Option.isNone(maxWait)) {
          return yield* new PublisherOffline({ message: `no publisher is online for '${model}'` })
        }
        const streaming = body.stream === true
        const submission = { model, path, streaming, requestBody: body, ownerId: principal.id }

        // Everything the waiter subscribes to lives in this scope; for a stream
        // it outlives the handler and closes when the response ends.
        const scope = yield* Scope.make()
        const closeScope = Scope.close(scope, Exit.void)
        // Online: enqueue and subscribe in one step. Offline with a max wait:
        // the task queues, and the wait for its answer starts once it is claimed.
        const submitted = online
          ? yield* Scope.extend(queue.submit(submission, route, timeout), scope).pipe(Effect.onError(() => closeScope))
          : { task: yield* queue.enqueue(submission, route), waiter: undefined }
        const task = submitted.task
        const headers = { [TASK_HEADER]: task.id }
        const cancel = (reason: string) => queue.cancel(task.id, reason).pipe(Effect.ignore)
        const waiting = Effect.gen(function* () {
          if (submitted.waiter !== undefined) return submitted.waiter
          if (Option.isSome(maxWait)) yield* awaitClaim(task.id, maxWait.value)
          return yield* Scope.extend(queue.waitFor(task.id, timeout), scope)
        }).pipe(Effect.onInterrupt(() => Effect.zipRight(cancel("the client closed the connection"), closeScope)))

        const answer = Effect.gen(function* () {
          const { chunks, result } = yield* waiting
          const onTimeout = <A, E, R>(self: Effect.Effect<A, E, R>) =>
            Effect.tapError(self, (e) =>
              typeof e === "object" && e !== null && "_tag" in e && e._tag === "Timeout"
                ? cancel("the request timed out")
                : Effect.void)
          if (!streaming) {
            const done = yield* onTimeout(result).pipe(
              Effect.onInterrupt(() => cancel("the client closed the connection"))
            )
            yield* closeScope
            return taskResponse(done, headers)
          }
          const pull = yield* Scope.extend(Stream.toPull(chunks), scope)
          type First = { readonly _tag: "Chunks"; readonly chunks: Chunk.Chunk<string> } | { readonly _tag: "End" } | {
            readonly _tag: "Done"
            readonly task: Task
          }
          const first: First = yield* Effect.raceFirst(
            pull.pipe(
              Effect.map((c): First => ({ _tag: "Chunks", chunks: c })),
              Effect.catchAll((o) => (Option.isNone(o) ? Effect.succeed<First>({ _tag: "End" }) : Effect.fail(o.value)))
            ),
            Effect.map(onTimeout(result), (t): First => ({ _tag: "Done", task: t }))
          ).pipe(Effect.onInterrupt(() => cancel("the client closed the connection")))
          if (first._tag !== "Chunks") {
            // Nothing streamed yet: the outcome can still choose the status.
            const done = first._tag === "Done" ? first.task : yield* onTimeout(result)
            if (done.responseBody !== null) {
              yield* closeScope
              return taskResponse(done, headers)
            }
          }
          const finished = yield* Ref.make(false)
          const rest = Stream.repeatEffectChunkOption(pull)
          const head = first._tag === "Chunks" ? Stream.fromChunk(first.chunks) : Stream.empty
          const tail = Stream.fromEffect(
            onTimeout(result).pipe(
              Effect.as("data: [DONE]\n\n"),
              Effect.catchAll((e) => Effect.succeed(errorFrame(e))),
              Effect.zipLeft(Ref.set(finished, true))
            )
          )
          const body = Stream.concat(
            Stream.concat(head, rest).pipe(
              Stream.map((chunk) => Sse.event(undefined, chunk)),
              Stream.catchAll((e) => Stream.make(errorFrame(e)))
            ),
            tail
          ).pipe(
            Stream.ensuring(
              Effect.zipRight(
                Effect.flatMap(Ref.get(finished), (done) => (done ? Effect.void : cancel("the client closed the connection"))),
                closeScope
              )
            )
          )
          return Sse.response(body, headers)
        })
        return yield* answer.pipe(
          Effect.catchAll((error) => Effect.zipRight(closeScope, failureResponse(error, headers)))
        )
      })

    const infer = (path: TaskPath) =>
    ({ payload, request }: { readonly payload: Record<string, unknown>; readonly request: HttpServerRequest.HttpServerRequest }) =>
      Effect.gen(function* () {
        const principal = yield* CurrentPrincipal
        const model = String(payload.model)
        const rows = yield* registry.resolve(model)
        if (rows.length === 0) return yield* new ModelNotFound({ message: `the model '${model}' does not exist` })
        const named = rows.find((row) => row.name === model)
        // A public LLM is proxied: named, or a pool with no virtual member
        // (its first active public member; a pool with virtual members queues)
        const publicTarget = named !== undefined
          ? (named.kind === "public" ? named : undefined)
          : rows.some((row) => row.kind === "virtual")
          ? undefined
          : rows.find((row) => row.kind === "public" && row.status === "active")
        if (publicTarget !== undefined) {
          const row = yield* registry.findRow(publicTarget.name)
          if (Option.isSome(row)) return yield* proxyPublic(row.value, path, payload, request)
        }
        return yield* relayVirtual(principal, path, payload, request, rows)
      })

    const modelsList = Effect.gen(function* () {
      return { object: "list" as const, data: yield* modelEntries }
    })

    /** Every LLM name, plus each pool name that differs from its members' names. */
    const modelEntries = Effect.gen(function* () {
      const llms = yield* registry.list
      const entry = (id: string, llm: Llm, kind: string, status: string) => ({
        id,
        object: "model" as const,
        created: Math.floor(llm.createdAt.getTime() / 1000),
        owned_by: "llm-relay",
        kind,
        pool: llm.pool,
        tier: llm.tier,
        status
      })
      const names = new Set(llms.map((l) => l.name))
      const pools = new Map<string, Array<Llm>>()
      for (const llm of llms) {
        if (!names.has(llm.pool)) pools.set(llm.pool, [...(pools.get(llm.pool) ?? []), llm])
      }
      return [
        ...llms.map((llm) => entry(llm.name, llm, llm.kind, llm.status)),
        ...[...pools.entries()].map(([pool, members]) =>
          entry(pool, members[0]!, "pool", members.some((m) => m.status === "active") ? "active" : "inactive")
        )
      ]
    })

    /** One entry of the list (the SDK's `models.retrieve`); 404 ModelNotFound for a name the list lacks. */
    const modelOne = (id: string) =>
      Effect.gen(function* () {
        const found = (yield* modelEntries).find((entry) => entry.id === id)
        if (found === undefined) return yield* new ModelNotFound({ message: `the model '${id}' does not exist` })
        return found
      })

    return handlers
      .handle("models", () => modelsList)
      .handle("model", ({ path }) => modelOne(path.id))
      .handle("chatCompletions", infer("/v1/chat/completions"))
      .handle("completions", infer("/v1/completions"))
      .handle("embeddings", infer("/v1/embeddings"))
  }))
