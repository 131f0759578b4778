/**
 * The client's side of the broker: where a model's call goes (a public LLM
 * is proxied, anything else is queued for publishers), the TaskWaiter of a
 * synchronous call, and waiting for or following a task of one's own. The
 * HTTP handlers decode, call one of these, and map the answer to the wire.
 */
import { type Chunk, Context, Data, Duration, Effect, Layer, Option, Ref, type Scope, Stream } from "effect"
import { RelayConfig } from "../config.js"
import type { BadRequest } from "../domain/Errors.js"
import type { Llm, LlmRow } from "../domain/Llm.js"
import {
  isTerminal,
  ModelNotFound,
  type NotVirtual,
  PublisherOffline,
  type Task,
  type TaskId,
  TaskNotFound,
  type TaskPath,
  Timeout
} from "../domain/Task.js"
import type { Principal } from "../domain/Token.js"
import { Registry } from "../registry/Registry.js"
import { Signals } from "../signals/Signals.js"
import { type EnqueueRequest, type ListRequest, type Route, TaskQueue, type WaitError } from "./TaskQueue.js"

/** An entry of the model list (`GET /v1/models`). */
export interface ModelEntry {
  readonly id: string
  readonly object: "model"
  readonly created: number
  readonly owned_by: string
  readonly kind: string
  readonly pool: string
  readonly tier: string
  readonly status: string
}

/** Where a model's call goes. */
export type Destination = Data.TaggedEnum<{
  /** A public LLM: the broker calls its upstream itself. */
  Proxy: { readonly row: LlmRow }
  /** A virtual LLM or a pool: a task queued for the publishers. */
  Queue: { readonly route: Route }
}>
export const Destination = Data.taggedEnum<Destination>()

/** A synchronous call to queue (the OpenAI routes). */
export interface CallRequest {
  readonly ownerId: string
  readonly path: TaskPath
  readonly body: Record<string, unknown>
  readonly route: Route
  /** With nobody online, wait this long for a claim instead of failing at once. */
  readonly maxWait: Option.Option<Duration.Duration>
  /** How long the answer may take; the configured sync timeout when absent. */
  readonly timeout: Option.Option<Duration.Duration>
}

/** Why a call failed once its task existed. */
export type CallError = WaitError | TaskNotFound

/** What a synchronous call came to, once its task existed. */
export type Answer = Data.TaggedEnum<{
  /** The task's whole answer: not streaming, or it ended with a body before any output streamed. */
  Whole: { readonly task: Task }
  /** The call failed (the task ended otherwise, or the wait ran out) before any output streamed. */
  Failed: { readonly taskId: TaskId; readonly error: CallError }
  /** The output, each chunk once in order; the stream ends when the task completes, or fails with why it did not. */
  Streaming: { readonly taskId: TaskId; readonly chunks: Stream.Stream<string, WaitError> }
}>
export const Answer = Data.taggedEnum<Answer>()

/** What following a task shows. */
export type TaskUpdate = Data.TaggedEnum<{
  /** The task as it is now (first, then each time it moves while live). */
  Status: { readonly task: Task }
  /** A piece of its output. */
  Chunk: { readonly chunk: string }
  /** The task as it ended. */
  Done: { readonly task: Task }
  /** It was deleted under the follower (retention). */
  Gone: { readonly taskId: TaskId }
}>
export const TaskUpdate = Data.taggedEnum<TaskUpdate>()

export interface RelayShape {
  /** Every LLM name, plus each pool name that differs from its members' names. */
  readonly models: Effect.Effect<ReadonlyArray<ModelEntry>>
  /** One entry of the list; ModelNotFound for a name the list lacks. */
  readonly model: (id: string) => Effect.Effect<ModelEntry, ModelNotFound>
  /** Where a call for `model` goes: ModelNotFound, or NotVirtual when there is neither a public row nor a publisher's. */
  readonly destination: (model: string) => Effect.Effect<Destination, ModelNotFound | NotVirtual>
  /**
   * Queue a call and wait for its answer, in the caller's Scope (for a stream,
   * the response's). Nobody online and no `maxWait` is PublisherOffline. The
   * client leaving or the wait running out cancels the task.
   */
  readonly call: (
    request: CallRequest
  ) => Effect.Effect<Answer, PublisherOffline | ModelNotFound | NotVirtual, Scope.Scope>
  /** Queue a task to fetch, wait for or follow later. */
  readonly enqueue: (
    principal: Principal,
    request: Omit<EnqueueRequest, "ownerId">
  ) => Effect.Effect<Task, ModelNotFound | NotVirtual>
  /** The principal's tasks (an admin's: everyone's). */
  readonly list: (
    principal: Principal,
    request: Omit<ListRequest, "ownerId">
  ) => Effect.Effect<{ readonly data: ReadonlyArray<Task>; readonly nextCursor: string | null }, BadRequest>
  /** One of the principal's tasks; another owner's is TaskNotFound too, so ids cannot be probed. */
  readonly get: (principal: Principal, taskId: TaskId) => Effect.Effect<Task, TaskNotFound>
  /** The task once it ends, in any state; Timeout when it has not within `timeoutMs`. */
  readonly wait: (
    principal: Principal,
    taskId: TaskId,
    timeoutMs: number
  ) => Effect.Effect<Task, TaskNotFound | Timeout>
  /** The task now, each move while it is live, its output, and how it ended. */
  readonly follow: (
    principal: Principal,
    taskId: TaskId
  ) => Effect.Effect<Stream.Stream<TaskUpdate, TaskNotFound>, TaskNotFound>
  readonly cancel: (principal: Principal, taskId: TaskId) => Effect.Effect<Task, TaskNotFound>
}

/** Long enough that a follower sees a task to its end (the task's own timeouts end it). */
const FOLLOW_TIMEOUT = Duration.days(8)

export const make = Effect.gen(function*() {
  const registry = yield* Registry
  const queue = yield* TaskQueue
  const signals = yield* Signals
  const config = yield* RelayConfig

  const models = Effect.gen(function*() {
    const llms = yield* registry.list
    const entry = (id: string, llm: Llm, kind: string, status: string): ModelEntry => ({
      id,
      object: "model",
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

  const model = (id: string) =>
    Effect.flatMap(models, (entries) => {
      const found = entries.find((entry) => entry.id === id)
      return found === undefined
        ? Effect.fail(new ModelNotFound({ message: `the model '${id}' does not exist` }))
        : Effect.succeed(found)
    })

  /**
   * A public LLM is proxied: named, or a pool with no virtual member (its
   * first active public member); anything else queues for publishers.
   */
  const destination = (model: string) =>
    Effect.gen(function*() {
      const rows = yield* registry.resolve(model)
      if (rows.length === 0) return yield* new ModelNotFound({ message: `the model '${model}' does not exist` })
      const named = rows.find((row) => row.name === model)
      const publicTarget = named !== undefined
        ? (named.kind === "public" ? named : undefined)
        : rows.some((row) => row.kind === "virtual")
        ? undefined
        : rows.find((row) => row.kind === "public" && row.status === "active")
      if (publicTarget !== undefined) {
        const row = yield* registry.findRow(publicTarget.name)
        if (Option.isSome(row)) return Destination.Proxy({ row: row.value })
      }
      return Destination.Queue({ route: yield* queue.route(model, rows) })
    })

  /**
   * With `maxWait` and no publisher online, the task waits queued; if nobody
   * has claimed it when the wait runs out it is cancelled: PublisherOffline.
   */
  const awaitClaim = (taskId: string, maxWait: Duration.Duration) =>
    Effect.gen(function*() {
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

  type First =
    | { readonly _tag: "Chunks"; readonly chunks: Chunk.Chunk<string> }
    | { readonly _tag: "End" }
    | { readonly _tag: "Done"; readonly task: Task }

  const call = (request: CallRequest) =>
    Effect.gen(function*() {
      const { maxWait, route } = request
      const model = String(request.body.model)
      if (!route.online && Option.isNone(maxWait)) {
        return yield* new PublisherOffline({ message: `no publisher is online for '${model}'` })
      }
      const timeout = Option.getOrElse(request.timeout, () => config.syncTimeout)
      const streaming = request.body.stream === true
      const submission = { model, path: request.path, streaming, requestBody: request.body, ownerId: request.ownerId }
      // Online: enqueue and subscribe in one step. Offline with a max wait:
      // the task queues, and the wait for its answer starts once it is claimed.
      const submitted = route.online
        ? yield* queue.submit(submission, route, timeout)
        : { task: yield* queue.enqueue(submission, route), waiter: undefined }
      const taskId = submitted.task.id
      const cancel = (reason: string) => queue.cancel(taskId, reason).pipe(Effect.ignore)
      const clientGone = cancel("the client closed the connection")
      const waiting = Effect.gen(function*() {
        if (submitted.waiter !== undefined) return submitted.waiter
        if (Option.isSome(maxWait)) yield* awaitClaim(taskId, maxWait.value)
        return yield* queue.waitFor(taskId, timeout)
      }).pipe(Effect.onInterrupt(() => clientGone))

      const answer = Effect.gen(function*() {
        const { chunks, result } = yield* waiting
        /** The outcome; the wait running out cancels the task. */
        const outcome = Effect.tapError(result, (e) =>
          e._tag === "Timeout" ? cancel("the request timed out") : Effect.void)
        if (!streaming) {
          return Answer.Whole({
            task: yield* Effect.onInterrupt(outcome, () =>
              clientGone)
          })
        }
        const pull = yield* Stream.toPull(chunks)
        const first: First = yield* Effect.raceFirst(
          pull.pipe(
            Effect.map((c): First => ({ _tag: "Chunks", chunks: c })),
            Effect.catchAll((o) => (Option.isNone(o) ? Effect.succeed<First>({ _tag: "End" }) : Effect.fail(o.value)))
          ),
          Effect.map(outcome, (t): First => ({ _tag: "Done", task: t }))
        ).pipe(Effect.onInterrupt(() => clientGone))
        if (first._tag !== "Chunks") {
          // Nothing streamed yet: the outcome can still choose the status.
          const done = first._tag === "Done" ? first.task : yield* outcome
          if (done.responseBody !== null) return Answer.Whole({ task: done })
        }
        // Until the outcome is known, the stream ending means the client left.
        const finished = yield* Ref.make(false)
        const finish = Ref.set(finished, true)
        const end = Effect.tapBoth(outcome, { onFailure: () => finish, onSuccess: () => finish })
        const head = first._tag === "Chunks" ? Stream.fromChunk(first.chunks) : Stream.empty
        return Answer.Streaming({
          taskId,
          chunks: Stream.concat(head, Stream.repeatEffectChunkOption(pull)).pipe(
            Stream.concat(Stream.execute(end)),
            Stream.ensuring(Effect.flatMap(Ref.get(finished), (done) => (done ? Effect.void : clientGone)))
          )
        })
      })
      return yield* Effect.catchAll(answer, (error) => Effect.succeed(Answer.Failed({ taskId, error })))
    })

  /** Another owner's task is a 404, so ids cannot be probed. */
  const get = (principal: Principal, id: TaskId) =>
    Effect.flatMap(
      queue.get(id),
      (task) =>
        Option.isSome(task) && (principal.role === "admin" || task.value.ownerId === principal.id)
          ? Effect.succeed(task.value)
          : Effect.fail(new TaskNotFound({ message: `no task '${id}'` }))
    )

  const current = (id: string) =>
    Effect.flatMap(
      queue.get(id),
      Option.match({
        onNone: () => Effect.fail(new TaskNotFound({ message: `no task '${id}'` })),
        onSome: Effect.succeed
      })
    )

  const wait = (principal: Principal, id: TaskId, timeoutMs: number) =>
    Effect.scoped(
      Effect.gen(function*() {
        yield* get(principal, id)
        const { result } = yield* queue.waitFor(id, Duration.millis(timeoutMs))
        // Any terminal state is an answer here (a task that ended in its own
        // Timeout too); only the wait running out is an error.
        return yield* result.pipe(
          Effect.catchAll(() =>
            Effect.flatMap(current(id), (task): Effect.Effect<Task, Timeout> =>
              isTerminal(task.status)
                ? Effect.succeed(task)
                : Effect.fail(new Timeout({ message: `task '${id}' did not finish within ${timeoutMs} ms` })))
          )
        )
      })
    )

  const follow = (principal: Principal, id: TaskId) =>
    Effect.as(
      get(principal, id),
      Stream.unwrapScoped(
        Effect.gen(function*() {
          // subscribed before the reads, so no move between them goes unseen
          const moves = yield* signals.subscribeTask(id)
          const { chunks, result } = yield* queue.waitFor(id, FOLLOW_TIMEOUT)
          const first = yield* current(id)
          /** A dispatch is a move too: the same status with a new attempt. */
          const moment = (task: Task) => `${task.status}#${task.attempts}`
          let last = moment(first)
          /** A status each time the live task moves (pending, claimed, running, a new attempt). */
          const statuses = Stream.fromQueue(moves).pipe(
            Stream.filter((event) =>
              event._tag === "Changed"
                ? !isTerminal(event.status)
                : event._tag === "Chunks" && !last.startsWith("running#")
            ),
            Stream.mapEffect(() => Effect.option(current(id))),
            Stream.filterMap((found) =>
              Option.filter(found, (task) => !isTerminal(task.status) && moment(task) !== last)
            ),
            Stream.map((task) => {
              last = moment(task)
              return TaskUpdate.Status({ task })
            })
          )
          const output = Stream.map(chunks, (chunk) => TaskUpdate.Chunk({ chunk })).pipe(
            Stream.catchAll(() => Stream.empty)
          )
          const done = Stream.fromEffect(
            Effect.flatMap(Effect.ignore(result), () => current(id)).pipe(
              Effect.map((task) => TaskUpdate.Done({ task })),
              // deleted under the follower (retention): say so rather than repeat a stale Task
              Effect.orElseSucceed(() => TaskUpdate.Gone({ taskId: id }))
            )
          )
          return Stream.make(TaskUpdate.Status({ task: first })).pipe(
            Stream.concat(Stream.merge(output, statuses, { haltStrategy: "left" })),
            Stream.concat(done)
          )
        })
      )
    )

  return {
    models,
    model,
    destination,
    call,
    enqueue: (principal, request) => queue.enqueue({ ...request, ownerId: principal.id }),
    list: (principal, request) =>
      queue.list(principal.role === "admin" ? request : { ...request, ownerId: principal.id }),
    get,
    wait,
    follow,
    cancel: (principal, id) => Effect.zipRight(get(principal, id), queue.cancel(id, "cancelled by the client"))
  } satisfies RelayShape
})

export class Relay extends Context.Tag("llm-relay/Relay")<Relay, RelayShape>() {
  /** Needs the `TaskQueue`, `Registry`, `Signals` and `RelayConfig`. */
  static readonly layer = Layer.effect(this, make)
}
