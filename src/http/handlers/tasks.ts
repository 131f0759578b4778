/** The async task API: queue now, fetch, wait, follow or cancel later. Own tasks only; admin sees all. */
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import { Effect, Schema, Stream } from "effect"
import { RelayConfig } from "../../config.js"
import { Task, TaskId } from "../../domain/Task.js"
import { Limits } from "../../limits/Limits.js"
import { Relay, type TaskUpdate } from "../../tasks/Relay.js"
import { RelayApi } from "../Api.js"
import { CurrentPrincipal } from "../Auth.js"
import { wireError } from "../Errors.js"
import * as Headers from "../Headers.js"
import * as Sse from "../Sse.js"

const encodeTask = (task: Task): string => JSON.stringify(Schema.encodeSync(Task)(task))

const updateEvent = (update: TaskUpdate): string => {
  switch (update._tag) {
    case "Status":
      return Sse.event("status", encodeTask(update.task))
    case "Chunk":
      return Sse.event("chunk", update.chunk)
    case "Done":
      return Sse.event("done", encodeTask(update.task))
    case "Gone":
      return Sse.event("error", JSON.stringify(wireError("TaskNotFound", `task '${update.taskId}' is gone`)))
    case "Cut":
      return Sse.event("error", JSON.stringify(wireError("RateLimited", update.message)))
  }
}

export const TasksLive = HttpApiBuilder.group(RelayApi, "tasks", (handlers) =>
  Effect.gen(function*() {
    const relay = yield* Relay
    const config = yield* RelayConfig
    const limits = yield* Limits
    // a task may wait an hour for a publisher: keep proxies from cutting the quiet stream
    const keepalive = Stream.tick(config.keepaliveInterval).pipe(Stream.drop(1), Stream.as(Sse.comment("keepalive")))

    return handlers
      .handle("create", ({ payload, request }) =>
        Effect.gen(function*() {
          const principal = yield* CurrentPrincipal
          const idempotencyKey = yield* Headers.idempotencyKey(request)
          return yield* relay.enqueue(principal, {
            model: payload.model,
            path: payload.path,
            streaming: payload.body.stream === true,
            priority: payload.priority,
            requestBody: payload.body,
            agentId: payload.agentId ?? null,
            idempotencyKey
          }).pipe(
            // like every answer that made a task, it names the task in X-Relay-Task-Id
            Effect.map((task) =>
              HttpServerResponse.unsafeJson(Schema.encodeSync(Task)(task), {
                status: 202,
                headers: { "x-relay-task-id": task.id }
              })
            )
          )
        }))
      .handle("list", ({ urlParams }) =>
        Effect.flatMap(CurrentPrincipal, (principal) =>
          relay.list(principal, {
            ...(urlParams.status !== undefined && urlParams.status !== "" ? { status: urlParams.status } : {}),
            ...(urlParams.agentId !== undefined && urlParams.agentId !== "" ? { agentId: urlParams.agentId } : {}),
            ...(urlParams.cursor !== undefined && urlParams.cursor !== "" ? { cursor: urlParams.cursor } : {}),
            limit: urlParams.limit
          })))
      .handle("get", ({ path }) =>
        Effect.flatMap(CurrentPrincipal, (principal) => relay.get(principal, TaskId.make(path.id))))
      .handle("wait", ({ path, urlParams }) =>
        Effect.gen(function*() {
          const principal = yield* CurrentPrincipal
          yield* limits.hold("waiting", principal.id)
          return yield* relay.wait(principal, TaskId.make(path.id), urlParams.timeoutMs)
        }))
      .handle("events", ({ path }) =>
        Effect.gen(function*() {
          const principal = yield* CurrentPrincipal
          yield* limits.hold("waiting", principal.id)
          const updates = yield* relay.follow(principal, TaskId.make(path.id))
          return Sse.response(Stream.merge(Stream.map(updates, updateEvent), keepalive, { haltStrategy: "left" }))
        }))
      .handle("cancel", ({ path }) =>
        Effect.gen(function*() {
          const principal = yield* CurrentPrincipal
          return yield* relay.cancel(principal, TaskId.make(path.id))
        }))
  }))
