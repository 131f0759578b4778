/** The async task API: queue now, fetch, wait, follow or cancel later. Own tasks only; admin sees all. */
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import { Duration, Effect, Option, Schema, Stream } from "effect"
import { RelayConfig } from "../../config.js"
import { isTerminal, Task, TaskNotFound, Timeout } from "../../domain/Task.js"
import type { Principal } from "../../domain/Token.js"
import { Signals } from "../../signals/Signals.js"
import { TaskQueue } from "../../tasks/TaskQueue.js"
import { RelayApi } from "../Api.js"
import { CurrentPrincipal } from "../Auth.js"
import { wireError } from "../Errors.js"
import * as Sse from "../Sse.js"

/** Long enough that an events stream follows a task to its end (the task's own timeouts end it). */
const FOLLOW_TIMEOUT = Duration.days(8)

const encodeTask = (task: Task): string => JSON.stringify(Schema.encodeSync(Task)(task))

export const TasksLive = HttpApiBuilder.group(RelayApi, "tasks", (handlers) =>
  Effect.gen(function* () {
    const queue = yield* TaskQueue
    const signals = yield* Signals
    const config = yield* RelayConfig

    /** Another owner's task is a 404, so ids cannot be probed. */
    const ownTask = (principal: Principal, id: string) =>
      Effect.flatMap(queue.get(id), (task) =>
        Option.isSome(task) && (principal.role === "admin" || task.value.ownerId === principal.id)
          ? Effect.succeed(task.value)
          : Effect.fail(new TaskNotFound({ message: `no task '${id}'` })))

    const current = (id: string) =>
      Effect.flatMap(queue.get(id), Option.match({
        onNone: () => Effect.fail(new TaskNotFound({ message: `no task '${id}'` })),
        onSome: Effect.succeed
      }))

    return handlers
      .handle("create", ({ payload }) =>
        Effect.flatMap(CurrentPrincipal, (principal) =>
          queue.enqueue({
            model: payload.model,
            path: payload.path,
            streaming: payload.body.stream === true,
            priority: payload.priority,
            requestBody: payload.body,
            ownerId: principal.id,
            agentId: payload.agentId ?? null
          }).pipe(
            // like every answer that made a task, it names the task in X-Relay-Task-Id
            Effect.map((task) =>
              HttpServerResponse.unsafeJson(Schema.encodeSync(Task)(task), {
                status: 202,
                headers: { "x-relay-task-id": task.id }
              }))
          )))
      .handle("list", ({ urlParams }) =>
        Effect.flatMap(CurrentPrincipal, (principal) =>
          queue.list({
            ...(principal.role === "admin" ? {} : { ownerId: principal.id }),
            ...(urlParams.status !== undefined && urlParams.status !== "" ? { status: urlParams.status } : {}),
            ...(urlParams.agentId !== undefined && urlParams.agentId !== "" ? { agentId: urlParams.agentId } : {}),
            ...(urlParams.cursor !== undefined && urlParams.cursor !== "" ? { cursor: urlParams.cursor } : {}),
            limit: urlParams.limit === "" ? 50 : urlParams.limit
          })))
      .handle("get", ({ path }) => Effect.flatMap(CurrentPrincipal, (principal) => ownTask(principal, path.id)))
      .handle("wait", ({ path, urlParams }) =>
        Effect.scoped(
          Effect.gen(function* () {
            const principal = yield* CurrentPrincipal
            yield* ownTask(principal, path.id)
            const { result } = yield* queue.waitFor(path.id, Duration.millis(urlParams.timeoutMs))
            // Any terminal state is an answer here (a task that ended in its own
            // Timeout too); only the wait running out is an error.
            return yield* result.pipe(
              Effect.catchAll(() =>
                Effect.flatMap(current(path.id), (task): Effect.Effect<Task, Timeout> =>
                  isTerminal(task.status)
                    ? Effect.succeed(task)
                    : Effect.fail(new Timeout({ message: `task '${path.id}' did not finish within ${urlParams.timeoutMs} ms` }))))
            )
          })
        ))
      .handle("events", ({ path }) =>
        Effect.gen(function* () {
          const principal = yield* CurrentPrincipal
          yield* ownTask(principal, path.id)
          const body = Stream.unwrapScoped(
            Effect.gen(function* () {
              // subscribed before the reads, so no move between them goes unseen
              const moves = yield* signals.subscribeTask(path.id)
              const { chunks, result } = yield* queue.waitFor(path.id, FOLLOW_TIMEOUT)
              const first = yield* current(path.id)
              /** A dispatch is a move too: the same status with a new attempt. */
              const moment = (task: Task) => `${task.status}#${task.attempts}`
              let last = moment(first)
              /** A `status` event each time the live task moves (pending, claimed, running, a new attempt). */
              const statuses = Stream.fromQueue(moves).pipe(
                Stream.filter((event) =>
                  event._tag === "Changed" ? !isTerminal(event.status) : event._tag === "Chunks" && !last.startsWith("running#")),
                Stream.mapEffect(() => Effect.option(current(path.id))),
                Stream.filterMap((found) =>
                  Option.filter(found, (task) => !isTerminal(task.status) && moment(task) !== last)),
                Stream.map((task) => {
                  last = moment(task)
                  return Sse.event("status", encodeTask(task))
                })
              )
              // a task may wait an hour for a publisher: keep proxies from cutting the quiet stream
              const keepalive = Stream.tick(config.keepaliveInterval).pipe(Stream.drop(1), Stream.as(Sse.comment("keepalive")))
              const output = Stream.map(chunks, (chunk) => Sse.event("chunk", chunk)).pipe(Stream.catchAll(() => Stream.empty))
              const done = Stream.fromEffect(
                Effect.flatMap(Effect.ignore(result), () => current(path.id)).pipe(
                  Effect.map((task) => Sse.event("done", encodeTask(task))),
                  // deleted under the stream (retention): say so rather than repeat a stale Task
                  Effect.orElseSucceed(() =>
                    Sse.event("error", JSON.stringify(wireError("TaskNotFound", `task '${path.id}' is gone`))))
                )
              )
              return Stream.make(Sse.event("status", encodeTask(first))).pipe(
                Stream.concat(Stream.merge(output, Stream.merge(statuses, keepalive), { haltStrategy: "left" })),
                Stream.concat(done)
              )
            })
          )
          return Sse.response(body)
        }))
      .handle("cancel", ({ path }) =>
        Effect.gen(function* () {
          const principal = yield* CurrentPrincipal
          yield* ownTask(principal, path.id)
          return yield* queue.cancel(path.id, "cancelled by the client")
        }))
  }))
