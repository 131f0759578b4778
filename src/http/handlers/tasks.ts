/** The async task API: queue now, fetch, wait, follow or cancel later. Own tasks only; admin sees all. */
import { HttpApiBuilder } from "@effect/platform"
import { Duration, Effect, Option, Schema, Stream } from "effect"
import { Task, TaskNotFound, Timeout } from "../../domain/Task.js"
import type { Principal } from "../../domain/Token.js"
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
          })))
      .handle("list", ({ urlParams }) =>
        Effect.flatMap(requireRole("client"), (principal) =>
          queue.list({
            ...(principal.role === "admin" ? {} : { ownerId: principal.id }),
            ...(urlParams.status !== undefined ? { status: urlParams.status } : {}),
            ...(urlParams.agentId !== undefined ? { agentId: urlParams.agentId } : {}),
            ...(urlParams.cursor !== undefined ? { cursor: urlParams.cursor } : {}),
            limit: urlParams.limit
          })))
      .handle("get", ({ path }) => Effect.flatMap(requireRole("client"), (principal) => ownTask(principal, path.id)))
      .handle("wait", ({ path, urlParams }) =>
        Effect.scoped(
          Effect.gen(function* () {
            const principal = yield* requireRole("client")
            yield* ownTask(principal, path.id)
            const { result } = yield* queue.waitFor(path.id, Duration.millis(urlParams.timeoutMs))
            // Any terminal state is an answer here; only the wait running out is an error.
            return yield* result.pipe(
              Effect.catchAll((error): Effect.Effect<Task, Timeout | TaskNotFound> =>
                error._tag === "Timeout"
                  ? Effect.fail(new Timeout({ message: `task '${path.id}' did not finish within ${urlParams.timeoutMs} ms` }))
                  : current(path.id))
            )
          })
        ))
      .handle("events", ({ path }) =>
        Effect.gen(function* () {
          const principal = yield* requireRole("client")
          const task = yield* ownTask(principal, path.id)
          const body = Stream.unwrapScoped(
            Effect.map(queue.waitFor(path.id, FOLLOW_TIMEOUT), ({ chunks, result }) =>
              Stream.concat(
                Stream.make(Sse.event("status", encodeTask(task))),
                Stream.concat(
                  Stream.map(chunks, (chunk) => Sse.event("chunk", chunk)).pipe(Stream.catchAll(() => Stream.empty)),
                  Stream.fromEffect(
                    Effect.flatMap(Effect.ignore(result), () => current(path.id)).pipe(
                      Effect.map((done) => Sse.event("done", encodeTask(done))),
                      Effect.orElseSucceed(() => Sse.event("done", encodeTask(task)))
                    )
                  )
                )
              ))
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
