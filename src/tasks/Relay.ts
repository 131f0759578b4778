/**
 * The client's side of the broker: where a model's call goes (a public LLM
 * is proxied, anything else is queued for publishers), the TaskWaiter of a
 * synchronous call, and waiting for or following a task of one's own. The
 * HTTP handlers decode, call one of these, and map the answer to the wire.
 */
import {
  type Chunk,
  Clock,
  Context,
  Data,
  Duration,
  Effect,
  Either,
  Fiber,
  Layer,
  Option,
  Queue,
  Ref,
  type Scope,
  Stream
} from "effect"
import { RelayConfig } from "../config.js"
import { BadRequest, type RateLimited } from "../domain/Errors.js"
import { type Llm, llmFromRow, type LlmRow } from "../domain/Llm.js"
import {
  isTerminal,
  ModelNotFound,
  type NotVirtual,
  PublisherOffline,
  type Task,
  TaskCancelled,
  type TaskId,
  TaskNotFound,
  type TaskPath,
  Timeout,
  UpstreamError
} from "../domain/Task.js"
import type { Principal } from "../domain/Token.js"
import { Registry } from "../registry/Registry.js"
import { Signals } from "../signals/Signals.js"
import {
  availability,
  type EnqueueRequest,
  type ListRequest,
  type Route,
  TaskQueue,
  type WaitError
} from "./TaskQueue.js"

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
  /** With nobody online, wait this long (or the rest of the reconnect grace, if longer) for a publisher. */
  readonly maxWait: Option.Option<Duration.Duration>
  /** How long the answer may take; the configured sync timeout when absent. */
  readonly timeout: Option.Option<Duration.Duration>
  /**
   * The client's Idempotency-Key: a call with a key the owner used before
   * attaches to that task (its answer, replayed for a stream). With a key,
   * the client leaving does not cancel the task, so that a retry can attach.
   */
  readonly idempotencyKey?: string | undefined
}

/** Why a call failed once its task existed. */
export type CallError = WaitError | TaskNotFound

/** A streaming call is still queued: its headers went out, its output has not started. */
export const QUEUED: unique symbol = Symbol.for("llm-relay/Relay/Queued")
export type Waiting = typeof QUEUED
/** An item of a streamed answer: a chunk, or a mark that the call still waits in the queue. */
export type Output = string | Waiting

/** What a synchronous call came to, once its task existed. */
export type Answer = Data.TaggedEnum<{
  /** The task's whole answer: not streaming, or it ended with a body before any output streamed. */
  Whole: { readonly task: Task }
  /** The call failed (the task ended otherwise, or the wait ran out) before any output streamed. */
  Failed: { readonly taskId: TaskId; readonly error: CallError }
  /**
   * The output, each chunk once in order, after `QUEUED` marks while the call
   * still waits in the queue; the stream ends when the task completes, or
   * fails with why it did not.
   */
  Streaming: { readonly taskId: TaskId; readonly chunks: Stream.Stream<Output, WaitError> }
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
  /** The reader left too much output unread: its stream ends here (the task goes on). */
  Cut: { readonly message: string }
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
  ) => Effect.Effect<Answer, PublisherOffline | ModelNotFound | NotVirtual | BadRequest | RateLimited, Scope.Scope>
  /** Queue a task to fetch, wait for or follow later (with an Idempotency-Key used before: that task). */
  readonly enqueue: (
    principal: Principal,
    request: Omit<EnqueueRequest, "ownerId">
  ) => Effect.Effect<Task, ModelNotFound | NotVirtual | BadRequest | RateLimited>
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

  const models = Effect.gen(function*() {
    const llms = yield* registry.list
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

  /** One model by its id, read directly (the row of that name, else the pool's members): no listing. */
  const model = (id: string) =>
    Effect.flatMap(registry.resolve(id), (rows) => {
      const named = rows.find((row) => row.name === id)
      if (named !== undefined) {
        const llm = llmFromRow(named)
        return Effect.succeed(entry(llm.name, llm, llm.kind, llm.status))
      }
      const members = rows.filter((row) => row.pool === id).map(llmFromRow)
      return members.length === 0
        ? Effect.fail(new ModelNotFound({ message: `the model '${id.slice(0, 200)}' does not exist` }))
        : Effect.succeed(
          entry(id, members[0]!, "pool", members.some((m) => m.status === "active") ? "active" : "inactive")
        )
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
      if (publicTarget !== undefined) return Destination.Proxy({ row: publicTarget })
      return Destination.Queue({ route: yield* queue.route(model, rows) })
    })

  /**
   * The guard of a queued call: while nobody serves its route, the task may
   * wait for a member to come back until the reconnect grace runs out (or
   * `maxWait`, if longer); then, if still unclaimed, it is abandoned and the
   * call answers PublisherOffline. A call that has seen its route online
   * (queued behind busy publishers, say) gets the grace from the moment the
   * last member went away, goodbye or not, so it is never left for the
   * pending timeout. Woken by the pool's member changes, with the slow poll
   * as the safety net; it reads nothing while the route stays online.
   */
  const guard = (taskId: TaskId, model: string, initial: Route, maxWait: Option.Option<Duration.Duration>) =>
    Effect.gen(function*() {
      const changes = yield* signals.subscribePoolChanges(initial.pool)
      const start = yield* Clock.currentTimeMillis
      const waitLimit = Option.match(maxWait, { onNone: () => 0, onSome: (d) => start + Duration.toMillis(d) })
      const graceMillis = Duration.toMillis(config.reconnectGrace)
      const poll = Duration.toMillis(config.pollInterval)
      let route = initial
      let seenOnline = initial.online
      /** Until a member changes or `millis` pass; then the route is read again. */
      const pause = (millis: number) =>
        Effect.gen(function*() {
          yield* Queue.take(changes).pipe(Effect.timeout(Duration.millis(Math.max(0, millis))), Effect.option)
          yield* Queue.takeAll(changes)
          route = yield* queue.route(model).pipe(Effect.orElseSucceed(() => ({ ...route, online: false })))
        })
      while (true) {
        if (route.online) {
          seenOnline = true
          yield* pause(poll)
          continue
        }
        const at = yield* Clock.currentTimeMillis
        const deadline = Math.max(
          route.reconnectingUntil ?? 0,
          waitLimit,
          seenOnline && route.lastWentAway !== null ? route.lastWentAway + graceMillis : 0
        )
        if (at < deadline) {
          yield* pause(Math.min(deadline - at, poll))
          continue
        }
        // a claimed task is in a publisher's hands: if it comes back to the queue, the member change wakes this
        if (yield* queue.abandon(taskId, `no publisher serving '${model}' came online in time`)) return
        yield* pause(poll)
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
      const key = request.idempotencyKey
      const streaming = request.body.stream === true
      const submission = {
        model,
        path: request.path,
        streaming,
        requestBody: request.body,
        ownerId: request.ownerId,
        idempotencyKey: key
      }
      const state = availability(route, yield* Clock.currentTimeMillis)
      if (state === "offline" && Option.isNone(maxWait)) {
        // nobody serves it: only a retry of a call that has its task already goes on
        const earlier = key === undefined
          ? Option.none()
          : yield* queue.findByKey({ ...submission, idempotencyKey: key })
        if (Option.isNone(earlier)) {
          return yield* new PublisherOffline({ message: `no publisher is online for '${model}'` })
        }
      }
      const timeout = Option.getOrElse(request.timeout, () => config.syncTimeout)
      const { task, waiter } = yield* queue.submit(submission, route, timeout)
      const taskId = task.id
      if (!isTerminal(task.status)) yield* Effect.forkScoped(guard(taskId, model, route, maxWait))
      const cancel = (reason: string) => queue.cancel(taskId, reason).pipe(Effect.ignore)
      // with an Idempotency-Key the task outlives the connection: a retry attaches to it
      const clientGone = key === undefined ? cancel("the client closed the connection") : Effect.void
      /** The outcome; the wait running out cancels the task. */
      const outcome = Effect.tapError(waiter.result, (e) =>
        e._tag === "Timeout" ? cancel("the request timed out") : Effect.void)

      if (!streaming) {
        return yield* outcome.pipe(
          Effect.map((task) =>
            Answer.Whole({ task })
          ),
          Effect.catchAll((error) => Effect.succeed(Answer.Failed({ taskId, error }))),
          Effect.onInterrupt(() => clientGone)
        )
      }

      // a caller that stops reading is cut off once its unread output passes the cap: its task is cancelled
      const chunks = waiter.chunks.pipe(
        Stream.catchTag("OutputOverflow", (overflow) =>
          Stream.fromEffect(
            Effect.zipRight(
              queue.cancel(taskId, overflow.message).pipe(Effect.ignore),
              Effect.fail(new TaskCancelled({ message: overflow.message }))
            )
          ))
      )
      const pull = yield* Stream.toPull(chunks)
      // The first output or the outcome, whichever comes first; it runs on
      // while the headers go out, if they must go before it.
      const first = yield* Effect.raceFirst(
        pull.pipe(
          Effect.map((c): First => ({ _tag: "Chunks", chunks: c })),
          Effect.catchAll((o) => (Option.isNone(o) ? Effect.succeed<First>({ _tag: "End" }) : Effect.fail(o.value)))
        ),
        Effect.map(outcome, (t): First => ({ _tag: "Done", task: t }))
      ).pipe(Effect.forkScoped)
      const raced = yield* Fiber.join(first).pipe(
        Effect.timeout(config.queuedHeadersAfter),
        Effect.map(Option.some),
        Effect.catchTag("TimeoutException", () => Effect.succeed(Option.none<First>())),
        Effect.either,
        Effect.onInterrupt(() => clientGone)
      )
      if (Either.isLeft(raced)) return Answer.Failed({ taskId, error: raced.left })
      const early = raced.right
      if (Option.isSome(early) && early.value._tag !== "Chunks") {
        // Nothing streamed, headers not sent: the outcome can still choose the status.
        const done = early.value._tag === "Done"
          ? Either.right(early.value.task)
          : yield* Effect.either(Effect.onInterrupt(outcome, () => clientGone))
        if (Either.isLeft(done)) return Answer.Failed({ taskId, error: done.left })
        if (done.right.responseBody !== null) return Answer.Whole({ task: done.right })
      }
      // Until the outcome is known, the stream ending means the client left.
      const finished = yield* Ref.make(false)
      const finish = Ref.set(finished, true)
      const end = Effect.tapBoth(outcome, { onFailure: () => finish, onSuccess: () => finish })
      const rest: Stream.Stream<Output, WaitError> = Stream.repeatEffectChunkOption(pull)
      /** After the first output (or the end): the rest, then the outcome. */
      const after = (f: First): Stream.Stream<Output, WaitError> => {
        if (f._tag === "Chunks") return Stream.concat(Stream.fromChunk(f.chunks), rest)
        if (f._tag === "Done" && f.task.responseBody !== null) {
          // a whole body for a stream, after the headers went out: nothing an SSE reader can take
          return Stream.fail(
            new UpstreamError({ message: "the publisher answered the stream with a whole body", status: 502 })
          )
        }
        return rest
      }
      const body: Stream.Stream<Output, WaitError> = Option.isSome(early)
        ? after(early.value)
        // headers now; `: queued` until the first output or the outcome
        : Stream.merge(
          Stream.concat(
            Stream.succeed<Waiting>(QUEUED),
            Stream.repeatEffect(Effect.as(Effect.sleep(config.keepaliveInterval), QUEUED))
          ),
          Stream.fromEffect(Fiber.join(first)),
          { haltStrategy: "right" }
        ).pipe(
          // nothing after the First: the merge may hold a mark it had not handed over yet
          Stream.takeUntil((item) => item !== QUEUED),
          Stream.flatMap((item) => (item === QUEUED ? Stream.succeed<Output>(QUEUED) : after(item)))
        )
      return Answer.Streaming({
        taskId,
        chunks: body.pipe(
          Stream.concat(Stream.execute(end)),
          Stream.ensuring(Effect.flatMap(Ref.get(finished), (done) => (done ? Effect.void : clientGone)))
        )
      })
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
            Stream.catchAll((overflow) =>
              Stream.concat(Stream.make(TaskUpdate.Cut({ message: overflow.message })), Stream.fail(overflow))
            )
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
            Stream.concat(done),
            // cut off: the stream ends after saying why; the reader may come back and replay
            Stream.catchTag("OutputOverflow", () => Stream.empty)
          )
        })
      )
    )

  return {
    models,
    model,
    destination,
    call,
    // a client may lower its tasks' priority, never raise them above everyone else's (PROTOCOL.md)
    enqueue: (principal, request) =>
      principal.role !== "admin" && (request.priority ?? 0) > 0
        ? Effect.fail(new BadRequest({ message: "priority: a client's tasks may not go above 0 (-100 to 0)" }))
        : queue.enqueue({ ...request, ownerId: principal.id }),
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
