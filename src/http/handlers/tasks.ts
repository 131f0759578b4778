/** The async task API: queue now, fetch, wait, follow or cancel later. Own tasks only; admin sees all. */
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import { Duration, Effect, Option, Schema, Stream } from "effect"
import { isTerminal, Task, TaskNotFound, Timeout } from "../../domain/Task.js"
import type { Principal } from "../../domain/Token.js"
import { Signals } from "../../signals/Signals.js"
import { TaskQueue } from "../../tasks/TaskQueue.js"
import { RelayApi } from "../Api.js"
import { requireRole } from "../Auth.js"
import * as Sse from "../Sse.js"

/** Long enough that an events stream follows a task to its end (the task's own timeouts end it). */
const FOLLOW_TIMEOUT = Duration.days(8)

const encodeTask = (task: Task): string => JSON.stringify(Schema.encodeSync(Task)(task))

export const TasksLive = HttpApiBuilder.group(RelayApi, "tasks", (handlers) =>
  Effect.gen(function* () {
    const queue = yield* TaskQueue
    const signals = yield* Signals

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
        Effect.flatMap(requireRole("client"), (principal) =>
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
        Effect.flatMap(requireRole("client"), (principal) =>
          queue.list({
            ...(principal.role === "admin" ? {} : { ownerId: principal.id }),
            ...(urlParams.status !== undefined && urlParams.status !== "" ? { status: urlParams.status } : {}),
            ...(urlParams.agentId !== undefined && urlParams.agentId !== "" ? { agentId: urlParams.agentId } : {}),
            ...(urlParams.cursor !== undefined && urlParams.cursor !== "" ? { cursor: urlParams.cursor } : {}),
            limit: urlParams.limit === "" ? 50 : urlParams.limit
          })))
      .handle("get", ({ path }) => Effect.flatMap(requireRole("client"), (principal) => ownTask(principal, path.id)))
      .handle("wait", ({ path, urlParams }) =>
        Effect.scoped(
          Effect.gen(function* () {
            const principal = yield* requireRole("client")
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
          const principal = yield* requireRole("client")
          yield* ownTask(principal, path.id)
          const body = Stream.unwrapScoped(
            Effect.gen(function* () {
              // subscribed before the reads, so no move between them goes unseen
              const moves = yield* signals.subscribeTask(path.id)
              const { chunks, result } = yield* queue.waitFor(path.id, FOLLOW_TIMEOUT)
              const first = yield* current(path.id)
              let last = first.status
              /** A `status` event each time the live status moves (pending, claimed, running). */
              const statuses = Stream.fromQueue(moves).pipe(
                Stream.filter((event) =>
                  event._tag === "Changed" ? !isTerminal(event.status) : event._tag === "Chunks" && last !== "running"),
                Stream.mapEffect(() => Effect.option(current(path.id))),
                Stream.filterMap((found) =>
                  Option.filter(found, (task) => !isTerminal(task.status) && task.status !== last)),
                Stream.map((task) => {
                  last = task.status
                  return Sse.event("status", encodeTask(task))
                })
              )
              const output = Stream.map(chunks, (chunk) => Sse.event("chunk", chunk)).pipe(Stream.catchAll(() => Stream.empty))
              const done = Stream.fromEffect(
                Effect.flatMap(Effect.ignore(result), () => current(path.id)).pipe(
                  Effect.map((task) => Sse.event("done", encodeTask(task))),
                  Effect.orElseSucceed(() => Sse.event("done", encodeTask(first)))
                )
              )
              return Stream.make(Sse.event("status", encodeTask(first))).pipe(
                Stream.concat(Stream.merge(output, statuses, { haltStrategy: "left" })),
                Stream.concat(done)
              )
            })
          )
          return Sse.response(body)
        }))
      .handle("cancel", ({ path }) =>
        Effect.gen(function* () {
          const principal = yield* requireRole("client")
          yield* ownTask(principal, path.id)
          return yield* queue.cancel(path.id, "cancelled by the client")
        }))
  }))
