/**
 * The OpenAI-compatible routes. A call for a public LLM is proxied; any other
 * is a TaskWaiter (Relay.call): enqueue a durable task, then wait on its
 * events with a timeout. The client leaving (interruption) or the timeout
 * cancels the task, which sends `cancel` to the holder.
 */
import { HttpApiBuilder, type HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Option, Stream } from "effect"
import { RelayConfig } from "../../config.js"
import type { Task, TaskPath } from "../../domain/Task.js"
import { Limits } from "../../limits/Limits.js"
import { type Answer, Destination, type Output, QUEUED, Relay } from "../../tasks/Relay.js"
import { RelayApi } from "../Api.js"
import { CurrentPrincipal } from "../Auth.js"
import { errorResponse, toWire, wireError } from "../Errors.js"
import * as Headers from "../Headers.js"
import * as Sse from "../Sse.js"
import { proxyPublic } from "./proxy.js"

const TASK_HEADER = "x-relay-task-id"

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
    onSome: (w) =>
      Effect.succeed(errorResponse(w.status, w.type, w.message, w.headers).pipe(HttpServerResponse.setHeaders(headers)))
  })

const errorFrame = (error: unknown): string => {
  const wire = Option.getOrElse(toWire(error), () => ({ type: "InternalError", message: "the relay failed" }))
  return Sse.event(undefined, JSON.stringify(wireError(wire.type, wire.message)))
}

const queuedComment = Sse.comment("queued")

/**
 * A streamed answer: `: queued` while the call waits in the queue, each chunk
 * an SSE event, then `[DONE]`, or an error event saying why it did not complete.
 */
const streamBody = (chunks: Stream.Stream<Output, unknown>) =>
  chunks.pipe(
    Stream.map((chunk) => (chunk === QUEUED ? queuedComment : Sse.event(undefined, chunk))),
    Stream.concat(Stream.make("data: [DONE]\n\n")),
    Stream.catchAll((e) => Stream.make(errorFrame(e)))
  )

const answerResponse = (answer: Answer) => {
  switch (answer._tag) {
    case "Whole":
      return Effect.succeed(taskResponse(answer.task, { [TASK_HEADER]: answer.task.id }))
    case "Failed":
      return failureResponse(answer.error, { [TASK_HEADER]: answer.taskId })
    case "Streaming":
      return Effect.succeed(Sse.response(streamBody(answer.chunks), { [TASK_HEADER]: answer.taskId }))
  }
}

export const OpenAiLive = HttpApiBuilder.group(RelayApi, "openai", (handlers) =>
  Effect.gen(function*() {
    const relay = yield* Relay
    const config = yield* RelayConfig
    const limits = yield* Limits

    const infer = (path: TaskPath) =>
    (
      { payload, request }: {
        readonly payload: Record<string, unknown>
        readonly request: HttpServerRequest.HttpServerRequest
      }
    ) =>
      Effect.gen(function*() {
        const principal = yield* CurrentPrincipal
        yield* limits.hold("waiting", principal.id)
        const destination = yield* relay.destination(String(payload.model))
        return yield* Destination.$match(destination, {
          Proxy: ({ row }) =>
            Effect.flatMap(
              Headers.seconds(request, "X-Relay-Timeout"),
              (timeout) => proxyPublic(row, path, payload, Option.getOrElse(timeout, () => config.syncTimeout))
            ),
          Queue: ({ route }) =>
            Effect.gen(function*() {
              const maxWait = yield* Headers.seconds(request, "X-Relay-Max-Wait")
              const timeout = yield* Headers.seconds(request, "X-Relay-Timeout")
              const idempotencyKey = yield* Headers.idempotencyKey(request)
              const answer = yield* relay.call({
                ownerId: principal.id,
                path,
                body: payload,
                route,
                maxWait,
                timeout,
                idempotencyKey
              })
              return yield* answerResponse(answer)
            })
        })
      })

    return handlers
      .handle("models", () => Effect.map(relay.models, (data) => ({ object: "list" as const, data })))
      .handle("model", ({ path }) => relay.model(path.id))
      .handle("chatCompletions", infer("/v1/chat/completions"))
      .handle("completions", infer("/v1/completions"))
      .handle("embeddings", infer("/v1/embeddings"))
  }))
