/**
 * The durable task queue: every inference request is a row of
 * `inference_tasks`, moved through its life by conditional statements
 * (TaskRepo). This service adds what SQL alone cannot say: which typed error a
 * lost race is, who must be woken (pools, waiters, holders), and how a waiter
 * follows a task to its end.
 */
import { Context, Data, Deferred, Duration, Effect, Layer, Mailbox, Option, Queue, type Scope, Stream } from "effect"
import * as Crypto from "node:crypto"
import { cutoff, InstanceId, now, RelayConfig } from "../config.js"
import { retryTransient } from "../db/Transient.js"
import { BadRequest, RateLimited } from "../domain/Errors.js"
import type { TaskFrame } from "../domain/Frames.js"
import type { LlmRow } from "../domain/Llm.js"
import {
  isTerminal,
  ModelNotFound,
  NotVirtual,
  PublisherDisconnected,
  PublisherOffline,
  type Task,
  TaskAlreadyTerminal,
  TaskCancelled,
  TaskNotFound,
  TaskNotHeld,
  type TaskStatus,
  Timeout,
  UpstreamError
} from "../domain/Task.js"
import { Registry } from "../registry/Registry.js"
import { Signals, type TaskEnding, type TaskEvent } from "../signals/Signals.js"
import { type ClaimedRow, type Holder, type Moved, type Room, taskFromRow, TaskRepo, type TaskRow } from "./Repo.js"

export interface EnqueueRequest {
  /** An LLM name (pinned to that row) or a pool name (any member). */
  readonly model: string
  readonly path: string
  readonly streaming: boolean
  readonly priority?: number | undefined
  readonly requestBody: unknown
  readonly ownerId: string
  readonly agentId?: string | null | undefined
  /**
   * The client's Idempotency-Key: when the owner already has a task with it
   * (made within 24 h), that task is the answer instead of a new one.
   */
  readonly idempotencyKey?: string | undefined
}

export interface ListRequest {
  readonly ownerId?: string | undefined
  readonly status?: TaskStatus | undefined
  readonly agentId?: string | undefined
  readonly cursor?: string | undefined
  readonly limit: number
}

/** Where a model's tasks are queued, and whether anyone serves it now. */
export interface Route {
  readonly pool: string
  readonly llmName: string | null
  readonly tier: string
  /** A member is active, healthy and its session's task stream is open. */
  readonly online: boolean
  /**
   * Not online, but a member went down without a goodbye (or registered
   * without streaming, or reports its upstream unhealthy): the route is
   * reconnecting until this moment (epoch ms), `RELAY_RECONNECT_GRACE` after
   * that. Null when no member is coming back.
   */
  readonly reconnectingUntil: number | null
  /** The last moment a member stopped being online, goodbye or not (epoch ms); null if none has. */
  readonly lastWentAway: number | null
}

/** Whether a route is served now, may be again soon, or not at all (PROTOCOL.md client routes). */
export const availability = (route: Route, nowMillis: number): "online" | "reconnecting" | "offline" =>
  route.online
    ? "online"
    : route.reconnectingUntil !== null && route.reconnectingUntil > nowMillis
    ? "reconnecting"
    : "offline"

export type WaitError = Timeout | TaskCancelled | UpstreamError | PublisherDisconnected | PublisherOffline

/**
 * A reader left more output unread than `RELAY_MAX_BUFFERED_OUTPUT`: its
 * stream of chunks is cut (the task itself goes on; a synchronous call
 * cancels it, an `/events` reader does not).
 */
export class OutputOverflow extends Data.TaggedError("OutputOverflow")<{ readonly message: string }> {}

export interface Waiter {
  /**
   * The task's output batches flattened, in order, each once; ends when the
   * task ends or the wait runs out; fails when the reader falls too far behind.
   */
  readonly chunks: Stream.Stream<string, OutputOverflow>
  /** The finished task, or why it did not complete. */
  readonly result: Effect.Effect<Task, WaitError>
}

/** The keyset cursor of a listing: the last task's creation time and id. */
const encodeCursor = (row: TaskRow) => Buffer.from(`${row.createdAt.getTime()}:${row.id}`).toString("base64url")
const decodeCursor = (cursor: string) => {
  const text = Buffer.from(cursor, "base64url").toString("utf8")
  const colon = text.indexOf(":")
  const millis = Number(text.slice(0, colon))
  const createdAt = new Date(millis)
  // a forged cursor may decode to U+0000, which no task id holds (nor PostgreSQL text), or to a
  // number no Date holds (an Invalid Date, which the driver cannot send)
  return colon > 0 && Number.isInteger(millis) && !Number.isNaN(createdAt.getTime()) && !text.includes("\u0000")
    ? Option.some({ createdAt, id: text.slice(colon + 1) })
    : Option.none()
}

/** What a claim took for a session (see `TaskQueue.claim`). */
export interface Claimed {
  readonly frames: ReadonlyArray<TaskFrame>
  /** Some row reached its free capacity: pending work may be left for it. */
  readonly full: boolean
  /** A full row sits next to one with room, which may have lost a task to it: look again at once. */
  readonly retry: boolean
  /** Each active, healthy row of the session: its free slots before the claim and how many it took. */
  readonly rooms: ReadonlyArray<Room>
}

/** What one pass of the task sweep did. */
export interface TaskSweepResult {
  /** Claims not acknowledged in time, reverted. */
  readonly reverted: number
  /** The sessions that held them: treated as lost (a half-open connection must not keep receiving prompts). */
  readonly unresponsive: ReadonlyArray<string>
  readonly expired: number
  readonly timedOut: number
  readonly deleted: number
  /** Finished tasks whose request, response and output were erased (RELAY_BODY_RETENTION). */
  readonly erased: number
}

/** Why a publisher's post for a task matched nothing. */
export type PostError = TaskNotFound | TaskCancelled | TaskAlreadyTerminal | TaskNotHeld

export interface TaskQueueShape {
  /** Where a model's tasks are queued (ModelNotFound, or NotVirtual for a model no publisher serves). */
  readonly route: (model: string, known?: ReadonlyArray<LlmRow>) => Effect.Effect<Route, ModelNotFound | NotVirtual>
  /**
   * Queues a task; a `route` from `route` saves looking the model up again.
   * With an Idempotency-Key the owner used before: that task, as it is now
   * (BadRequest when it was made for another request).
   */
  readonly enqueue: (
    request: EnqueueRequest,
    routed?: Route
  ) => Effect.Effect<Task, ModelNotFound | NotVirtual | BadRequest | RateLimited>
  readonly get: (id: string) => Effect.Effect<Option.Option<Task>>
  readonly findPendingForPools: (pools: ReadonlyArray<string>, limit?: number) => Effect.Effect<ReadonlyArray<Task>>
  readonly list: (
    request: ListRequest
  ) => Effect.Effect<{ readonly data: ReadonlyArray<Task>; readonly nextCursor: string | null }, BadRequest>
  /**
   * Enqueue and follow in one go, the waiter subscribed before the insert.
   * With an Idempotency-Key the owner used before, it follows that task
   * instead (`attached`).
   */
  readonly submit: (
    request: EnqueueRequest,
    routed: Route,
    timeout: Duration.DurationInput
  ) => Effect.Effect<
    { readonly task: Task; readonly waiter: Waiter; readonly attached: boolean },
    BadRequest | RateLimited,
    Scope.Scope
  >
  /** The owner's task with this Idempotency-Key (BadRequest when made for another request). */
  readonly findByKey: (
    request: EnqueueRequest & { readonly idempotencyKey: string }
  ) => Effect.Effect<Option.Option<Task>, BadRequest>
  readonly claim: (sessionId: string) => Effect.Effect<Claimed>
  readonly claimFor: (sessionId: string) => Effect.Effect<ReadonlyArray<TaskFrame>>
  readonly ack: (sessionId: string, taskId: string, attempt?: number) => Effect.Effect<void, PostError>
  readonly appendChunks: (
    sessionId: string,
    taskId: string,
    chunks: ReadonlyArray<string>,
    attempt?: number
  ) => Effect.Effect<void, PostError>
  readonly complete: (
    sessionId: string,
    taskId: string,
    result: { readonly status: number; readonly body?: unknown },
    attempt?: number
  ) => Effect.Effect<void, PostError>
  /**
   * The holder reports an error. With `retry` and no output sent yet (its
   * upstream could not be reached) the task goes back to the queue for
   * another member, or at the attempt limit ends `error` `UpstreamError`
   * with this message; with output sent, `retry` is ignored.
   */
  readonly fail: (
    sessionId: string,
    taskId: string,
    error: {
      readonly message: string
      readonly status: number
      readonly body?: unknown
      readonly retry?: boolean | undefined
    },
    attempt?: number
  ) => Effect.Effect<void, PostError>
  /**
   * The `task` frames of the claims the session has not acknowledged (same
   * attempt): what a new task stream sends first, so a frame lost with a
   * dropped stream is not lost work.
   */
  readonly unacknowledged: (sessionId: string) => Effect.Effect<ReadonlyArray<TaskFrame>>
  /** Cancels a live task (its holder gets `cancel`); a finished task is returned as it is. */
  readonly cancel: (taskId: string, reason: string) => Effect.Effect<Task, TaskNotFound>
  /**
   * Gives up a task nobody has claimed, for want of a publisher: it ends
   * `cancelled`, and its waiters get PublisherOffline. False when it was
   * claimed (or ended) first.
   */
  readonly abandon: (taskId: string, reason: string) => Effect.Effect<boolean>
  /** The session is gone: its held tasks revert or fail; how many moved. */
  readonly revertHeldBy: (sessionId: string) => Effect.Effect<number>
  readonly startupRecovery: Effect.Effect<number>
  readonly sweep: Effect.Effect<TaskSweepResult>
  /** Follows a task until it ends or `timeout` passes; the follower lives in the Scope. */
  readonly waitFor: (
    taskId: string,
    timeout: Duration.DurationInput
  ) => Effect.Effect<Waiter, TaskNotFound, Scope.Scope>
}

/** The `task` frame of a claimed task. */
const frameOf = (task: ClaimedRow): TaskFrame => ({
  _tag: "task",
  kind: "infer",
  taskId: task.id,
  attempt: task.attempts,
  llmName: task.claimedLlm ?? task.pool,
  model: task.llmModel,
  path: task.path,
  streaming: task.streaming,
  body: task.requestBody
})

/** How a row ended, for the waiters of its task. */
const endingOf = (row: TaskRow): TaskEnding => ({
  task: taskFromRow(row),
  errorType: row.errorType,
  chunkCount: row.chunkCount
})

/** What a terminal task means to someone waiting for its answer. */
export const outcome = ({ errorType, task }: TaskEnding): Effect.Effect<Task, WaitError> => {
  const message = task.errorMessage ?? `task '${task.id}' ended ${task.status}`
  switch (task.status) {
    case "completed":
      return Effect.succeed(task)
    case "cancelled":
      // given up for want of a publisher (Relay's guard): the call's answer is PublisherOffline
      return Effect.fail(
        errorType === "PublisherOffline" ? new PublisherOffline({ message }) : new TaskCancelled({ message })
      )
    default:
      switch (errorType) {
        case "Timeout":
          return Effect.fail(new Timeout({ message }))
        case "Expired":
          return Effect.fail(new PublisherOffline({ message }))
        case "PublisherDisconnected":
        case "MaxAttempts":
          return Effect.fail(new PublisherDisconnected({ message }))
        default:
          return Effect.fail(
            new UpstreamError({
              message,
              status: task.responseStatus ?? 502,
              ...(task.responseBody !== null && task.responseBody !== undefined ? { body: task.responseBody } : {})
            })
          )
      }
  }
}

export const make = Effect.gen(function*() {
  const repo = yield* TaskRepo
  const registry = yield* Registry
  const signals = yield* Signals
  const config = yield* RelayConfig
  const instanceId = yield* InstanceId

  const pendingExpired = `no publisher took the task within ${Duration.format(config.pendingTimeout)}`

  const changed = (taskId: string, status: TaskStatus) => signals.publishTask(taskId, { _tag: "Changed", status })

  /** After a revert or timeout: waiters re-read, pools with work again wake, holders stop and may claim. */
  const announce = (moved: ReadonlyArray<Moved>, cancelReason?: string) =>
    Effect.forEach(
      moved,
      (task) =>
        Effect.all([
          changed(task.id, task.status),
          task.status === "pending" ? signals.wakePool({ pool: task.pool, llmName: task.llmName }) : Effect.void,
          task.previousHolder !== null && cancelReason !== undefined
            ? signals.publishSession(task.previousHolder, { _tag: "Cancel", taskId: task.id, reason: cancelReason })
            : Effect.void,
          task.previousHolder !== null
            ? signals.publishSession(task.previousHolder, { _tag: "Freed", llmName: task.previousLlm })
            : Effect.void
        ], { discard: true }),
      { discard: true }
    )

  /**
   * Where a model's tasks go: a model names a row (pinned to it) unless that
   * row is its own pool, in which case it names the pool (any member), like a
   * bare pool name does; and whether it is online or reconnecting.
   */
  const route = Effect.fn("TaskQueue.route")(function*(model: string, known?: ReadonlyArray<LlmRow>) {
    const rows = known ?? (yield* registry.resolve(model))
    if (rows.length === 0) return yield* new ModelNotFound({ message: `the model '${model}' does not exist` })
    const named = rows.find((row) => row.name === model)
    if (named !== undefined && named.kind === "public") {
      return yield* new NotVirtual({ message: `'${model}' is a public LLM; it has no publisher to queue for` })
    }
    const pinned = named !== undefined && named.pool !== named.name
    const members = rows.filter((row) => row.kind === "virtual" && (pinned ? row === named : row.pool === model))
    if (members.length === 0) return yield* new NotVirtual({ message: `the pool '${model}' has no virtual members` })
    const graceMillis = Duration.toMillis(config.reconnectGrace)
    const comingBack = members.flatMap((row) => row.downSince === null ? [] : [row.downSince.getTime() + graceMillis])
    const wentAway = members.flatMap((row) => {
      const at = row.downSince ?? row.inactiveSince
      return at === null ? [] : [at.getTime()]
    })
    return {
      pool: pinned ? named.pool : model,
      llmName: pinned ? named.name : null,
      tier: members[0]!.tier,
      online: members.some((row) => row.status === "active" && row.streamOpen && row.healthy),
      reconnectingUntil: comingBack.length === 0 ? null : Math.max(...comingBack),
      lastWentAway: wentAway.length === 0 ? null : Math.max(...wentAway)
    } satisfies Route
  })

  /** Queues a task; `route` (from `TaskQueue.route`) saves looking the model up again. */
  const enqueue = Effect.fn("TaskQueue.enqueue")(function*(request: EnqueueRequest, routed?: Route) {
    const target = routed ?? (yield* route(request.model))
    return taskFromRow((yield* insert(Crypto.randomUUID(), request, target)).row)
  })

  /** The owner's task with this key, unless it was made for another request. */
  const keyed = (request: EnqueueRequest, key: string) =>
    Effect.flatMap(
      repo.findByKey(request.ownerId, key, request.path, request.requestBody),
      (found) =>
        Option.isSome(found) && !found.value.same
          ? Effect.fail(
            new BadRequest({
              message: `Idempotency-Key '${key.slice(0, 200)}' was used for a different request within 24 h`
            })
          )
          : Effect.succeed(Option.map(found, (f) => f.row))
    )

  const findByKey = (request: EnqueueRequest & { readonly idempotencyKey: string }) =>
    Effect.map(keyed(request, request.idempotencyKey), Option.map(taskFromRow))

  /**
   * Stores a new pending task and wakes its pool; or, when the owner used
   * the request's Idempotency-Key before, returns that task (`fresh` false).
   */
  const insert = Effect.fnUntraced(function*(id: string, request: EnqueueRequest, target: Route) {
    const key = request.idempotencyKey ?? null
    // the earlier task may be forgotten between the two statements: then try again
    while (true) {
      const inserted = yield* repo.insert(
        {
          id,
          pool: target.pool,
          llmName: target.llmName,
          model: request.model,
          tier: target.tier,
          path: request.path,
          streaming: request.streaming,
          priority: request.priority ?? 0,
          requestBody: request.requestBody,
          ownerId: request.ownerId,
          agentId: request.agentId ?? null,
          idempotencyKey: key
        },
        yield* now,
        config.limitPending
      )
      if (Option.isSome(inserted)) {
        yield* signals.wakePool({ pool: inserted.value.pool, llmName: inserted.value.llmName })
        return { row: inserted.value, fresh: true }
      }
      const earlier = key === null ? Option.none() : yield* keyed(request, key)
      if (Option.isSome(earlier)) return { row: earlier.value, fresh: false }
      if (!(yield* repo.hasPendingRoom(request.ownerId, config.limitPending))) {
        return yield* new RateLimited({
          message:
            `limit reached: ${config.limitPending} tasks pending (RELAY_LIMIT_PENDING); wait for some to be taken`,
          retryAfter: 5
        })
      }
    }
  })

  const get = (id: string) => Effect.map(repo.find(id), Option.map(taskFromRow))

  /**
   * What a session serving `pools` would drain on bind, in claim order
   * (priority, then age); reads only — the claim itself takes them.
   */
  const findPendingForPools = Effect.fn("TaskQueue.findPendingForPools")(
    function*(pools: ReadonlyArray<string>, limit: number = 1000) {
      return (yield* repo.findPendingForPools(pools, limit)).map(taskFromRow)
    }
  )

  const list = Effect.fn("TaskQueue.list")(function*(request: ListRequest) {
    let after: { createdAt: Date; id: string } | undefined
    if (request.cursor !== undefined) {
      const decoded = decodeCursor(request.cursor)
      if (Option.isNone(decoded)) return yield* new BadRequest({ message: "cursor is not one this API returned" })
      after = decoded.value
    }
    const rows = yield* repo.list({
      ownerId: request.ownerId,
      status: request.status,
      agentId: request.agentId,
      after,
      limit: request.limit + 1
    })
    const page = rows.slice(0, request.limit)
    return {
      data: page.map(taskFromRow),
      nextCursor: rows.length > request.limit ? encodeCursor(page[page.length - 1]!) : null
    }
  })

  /**
   * Claims what fits for a session, in one statement. `full` says some row
   * reached its free capacity, so pending work may be left for it: the actor
   * looks again when capacity frees instead of waiting for a new pool signal.
   * `retry` says a full row sits next to one with room, which may have lost a
   * task to it: look again at once.
   */
  const claim = Effect.fn("TaskQueue.claim")(function*(sessionId: string) {
    const { full, roomLeft, rooms, tasks } = yield* repo.claimFor(sessionId, yield* now)
    const frames: Array<TaskFrame> = []
    for (const task of tasks) {
      frames.push(frameOf(task))
      yield* changed(task.id, "claimed")
    }
    // Pinned tasks taken by a full row may have left pool tasks locked past
    // the cut, which another session skipped: wake the pool for them.
    const pinnedPools = new Set(tasks.filter((task) => task.llmName !== null).map((task) => task.pool))
    if (full) yield* Effect.forEach(pinnedPools, (pool) => signals.wakePool({ pool }), { discard: true })
    return { frames, full, retry: full && roomLeft && frames.length > 0, rooms }
  })

  const unacknowledged = Effect.fn("TaskQueue.unacknowledged")(function*(sessionId: string) {
    return (yield* repo.unacknowledged(sessionId)).map(frameOf)
  })

  /** The `task` frames of what `claim` took for the session. */
  const claimFor = (sessionId: string) => Effect.map(claim(sessionId), (claimed) => claimed.frames)

  /**
   * Why a publisher's post matched nothing. `completeAgain` is the one benign
   * case: the holder repeating its own result.
   */
  const diagnose = (
    h: Holder,
    completeAgain: boolean
  ): Effect.Effect<void, TaskNotFound | TaskCancelled | TaskAlreadyTerminal | TaskNotHeld> =>
    Effect.flatMap(
      repo.find(h.taskId),
      (found): Effect.Effect<void, TaskNotFound | TaskCancelled | TaskAlreadyTerminal | TaskNotHeld> => {
        if (Option.isNone(found)) return Effect.fail(new TaskNotFound({ message: `no task '${h.taskId}'` }))
        const task = found.value
        const sameAttempt = h.attempt === undefined || h.attempt === task.attempts
        const mine = task.claimedBy === h.sessionId && sameAttempt
        if (task.status === "cancelled") {
          return Effect.fail(new TaskCancelled({ message: task.errorMessage ?? `task '${h.taskId}' was cancelled` }))
        }
        if (completeAgain && mine && task.status === "completed") return Effect.void
        if (isTerminal(task.status) && mine) {
          return Effect.fail(
            new TaskAlreadyTerminal({
              message: `task '${h.taskId}' already ended (${task.status}); this session holds it no more`
            })
          )
        }
        return Effect.fail(
          new TaskNotHeld({
            message: sameAttempt
              ? `session '${h.sessionId}' does not hold task '${h.taskId}'`
              : `attempt ${h.attempt} of task '${h.taskId}' is over (now attempt ${task.attempts})`
          })
        )
      }
    )

  const holder = (sessionId: string, taskId: string, attempt: number | undefined): Holder =>
    attempt === undefined ? { sessionId, taskId } : { sessionId, taskId, attempt }

  const ack = Effect.fn("TaskQueue.ack")(function*(sessionId: string, taskId: string, attempt?: number) {
    const h = holder(sessionId, taskId, attempt)
    if (!(yield* repo.ack(h, yield* now))) return yield* diagnose(h, false)
    yield* changed(taskId, "running")
  })

  const appendChunks = Effect.fn("TaskQueue.appendChunks")(
    function*(sessionId: string, taskId: string, chunks: ReadonlyArray<string>, attempt?: number) {
      const h = holder(sessionId, taskId, attempt)
      if (chunks.length === 0) return yield* ack(sessionId, taskId, attempt)
      const stored = yield* repo.appendChunks(h, chunks, yield* now)
      if (Option.isNone(stored)) return yield* diagnose(h, false)
      yield* signals.publishTask(taskId, { _tag: "Chunks", seq: stored.value.seq, chunks })
    }
  )

  const finished = (sessionId: string, row: TaskRow) =>
    Effect.zipRight(
      signals.publishTask(row.id, { _tag: "Finished", ending: endingOf(row) }),
      signals.publishSession(sessionId, { _tag: "Freed", llmName: row.claimedLlm })
    )

  const complete = Effect.fn("TaskQueue.complete")(
    function*(sessionId: string, taskId: string, result: { status: number; body?: unknown }, attempt?: number) {
      const h = holder(sessionId, taskId, attempt)
      const done = yield* repo.complete(h, result.status, result.body, yield* now)
      if (Option.isNone(done)) return yield* diagnose(h, true)
      yield* finished(sessionId, done.value)
    }
  )

  const fail = Effect.fn("TaskQueue.fail")(
    function*(
      sessionId: string,
      taskId: string,
      error: { message: string; status: number; body?: unknown; retry?: boolean | undefined },
      attempt?: number
    ) {
      const h = holder(sessionId, taskId, attempt)
      const { retry, ...failure } = error
      if (retry === true) {
        const handedBack = yield* repo.handBack(h, failure, config.maxAttempts, yield* now)
        if (Option.isSome(handedBack)) {
          const row = handedBack.value
          if (row.status === "pending") {
            // like a revert: waiters see it queued again, another member of the pool looks, the session has room
            yield* changed(taskId, "pending")
            yield* signals.wakePool({ pool: row.pool, llmName: row.llmName, handedBackBy: sessionId })
            yield* signals.publishSession(sessionId, { _tag: "Freed" })
          } else {
            yield* finished(sessionId, row)
          }
          return
        }
        // not handed back: output was sent (retry is ignored), or the fence does not match (diagnosed below)
      }
      const done = yield* repo.fail(h, failure, yield* now)
      if (Option.isNone(done)) return yield* diagnose(h, false)
      yield* finished(sessionId, done.value)
    }
  )

  /** Cancels a live task (its holder gets `cancel`); a finished task is returned as it is. */
  const cancel = Effect.fn("TaskQueue.cancel")(function*(taskId: string, reason: string) {
    const cancelled = yield* repo.cancel(taskId, reason, yield* now)
    if (Option.isSome(cancelled)) {
      const row = cancelled.value
      yield* signals.publishTask(taskId, { _tag: "Finished", ending: endingOf(row) })
      if (row.claimedBy !== null) {
        yield* signals.publishSession(row.claimedBy, { _tag: "Cancel", taskId, reason })
        yield* signals.publishSession(row.claimedBy, { _tag: "Freed", llmName: row.claimedLlm })
      }
      return taskFromRow(row)
    }
    const current = yield* repo.find(taskId)
    if (Option.isNone(current)) return yield* new TaskNotFound({ message: `no task '${taskId}'` })
    return taskFromRow(current.value)
  })

  const abandon = Effect.fn("TaskQueue.abandon")(function*(taskId: string, reason: string) {
    const cancelled = yield* repo.cancelPending(taskId, reason, "PublisherOffline", yield* now)
    if (Option.isNone(cancelled)) return false
    yield* signals.publishTask(taskId, { _tag: "Finished", ending: endingOf(cancelled.value) })
    return true
  })

  /** The session is gone: its held tasks revert or fail (PROTOCOL.md "Disconnects"). */
  const revertHeldBy = Effect.fn("TaskQueue.revertHeldBy")(function*(sessionId: string) {
    const at = yield* now
    // a lost session's tasks must not stay held for want of a retry: this runs as its stream closes
    const moved = yield* retryTransient(repo.revertHeldBy(sessionId, config.maxAttempts, at))
    yield* announce(moved)
    return moved.length
  })

  /** At start: sessions of a dead broker process are offline, and the tasks they held revert. */
  const startupRecovery = Effect.gen(function*() {
    const offline = yield* registry.recoverAfterRestart()
    const moved = yield* repo.revertForeign(instanceId, config.maxAttempts, yield* now)
    yield* announce(moved)
    if (moved.length + offline.length > 0) {
      yield* Effect.logInfo(
        `startup recovery: ${offline.length} LLM row(s) offline until their publishers reconnect, ${moved.length} held task(s) reverted`
      )
    }
    return moved.length
  }).pipe(Effect.withSpan("TaskQueue.startupRecovery"))

  /** One pass of the task timeouts and retention; each step idempotent. */
  const sweep = Effect.gen(function*() {
    const at = yield* Effect.clockWith((c) => c.currentTimeMillis)
    const atDate = new Date(at)
    const unacked = yield* repo.revertUnacked(cutoff(at, config.claimAckTimeout), config.maxAttempts, atDate)
    yield* announce(unacked, "the task was not acknowledged in time and went to another publisher")
    const expired = yield* repo.expirePending(cutoff(at, config.pendingTimeout), pendingExpired, atDate)
    yield* announce(expired)
    const timedOut = yield* repo.timeoutRunning(
      cutoff(at, config.runningTimeout),
      `the task ran longer than ${Duration.format(config.runningTimeout)}`,
      atDate
    )
    yield* announce(timedOut, "the task ran too long")
    yield* repo.forgetKeys(cutoff(at, config.idempotencyWindow))
    let deleted = 0
    const retainedAfter = cutoff(at, config.terminalRetention)
    while (true) {
      const n = yield* repo.deleteFinished(retainedAfter, config.retentionBatchSize)
      deleted += n
      if (n < config.retentionBatchSize) break
    }
    // prompts are private: bodies go after RELAY_BODY_RETENTION, the rows stay until their own retention
    let erased = 0
    const eraseBefore = cutoff(at, config.bodyRetention)
    while (true) {
      const n = yield* repo.eraseBodies(eraseBefore, config.retentionBatchSize, atDate)
      erased += n
      if (n < config.retentionBatchSize) break
    }
    const unresponsive = [...new Set(unacked.flatMap((task) => task.previousHolder ?? []))]
    return {
      reverted: unacked.length,
      unresponsive,
      expired: expired.length,
      timedOut: timedOut.length,
      deleted,
      erased
    }
  }).pipe(Effect.withSpan("TaskQueue.sweep"))

  /**
   * Follows a task until it ends or `timeout` passes (counted from now): its
   * output batches in order (replayed from the database for a late waiter or
   * a missed event) and its outcome. The follower fiber lives in the Scope.
   */
  const waitFor = (taskId: string, timeoutInput: Duration.DurationInput) =>
    Effect.gen(function*() {
      const events = yield* signals.subscribeTask(taskId)
      const initial = yield* repo.find(taskId)
      if (Option.isNone(initial)) return yield* new TaskNotFound({ message: `no task '${taskId}'` })
      return yield* watch(taskId, Duration.decode(timeoutInput), events, initial.value)
    })

  /**
   * Enqueue and wait in one go (the OpenAI routes): the waiter subscribes
   * before the insert, so the inserted row is its starting point and no
   * re-read is needed.
   */
  const submit = (request: EnqueueRequest, routed: Route, timeoutInput: Duration.DurationInput) =>
    Effect.gen(function*() {
      const id = Crypto.randomUUID()
      const timeout = Duration.decode(timeoutInput)
      const events = yield* signals.subscribeTask(id)
      const { fresh, row } = yield* insert(id, request, routed)
      if (fresh) return { task: taskFromRow(row), waiter: yield* watch(id, timeout, events, row), attached: false }
      // an earlier task of this Idempotency-Key: follow it, subscribed before reading it again
      const earlierEvents = yield* signals.subscribeTask(row.id)
      const current = Option.getOrElse(yield* repo.find(row.id), () => row)
      return {
        task: taskFromRow(current),
        waiter: yield* watch(row.id, timeout, earlierEvents, current),
        attached: true
      }
    })

  /** A waiter on a task from a known row, with its task events already subscribed. */
  const watch = (taskId: string, timeout: Duration.Duration, events: Queue.Dequeue<TaskEvent>, initialRow: TaskRow) =>
    Effect.gen(function*() {
      const mailbox = yield* Mailbox.make<string, OutputOverflow>()
      /** Bytes offered and not yet taken by the reader: a reader that stops reading must not hold the rest in memory. */
      let buffered = 0
      const result = yield* Deferred.make<Task, WaitError>()
      let nextSeq = 1

      const deliver = (batches: ReadonlyArray<{ readonly seq: number; readonly chunks: ReadonlyArray<string> }>) =>
        Effect.forEach(batches, (batch) => {
          if (batch.seq !== nextSeq) return Effect.void
          nextSeq += 1
          for (const chunk of batch.chunks) buffered += Buffer.byteLength(chunk)
          if (buffered > config.maxBufferedOutput) {
            return mailbox.fail(
              new OutputOverflow({
                message:
                  `the reader left more than ${config.maxBufferedOutput} bytes of output unread (RELAY_MAX_BUFFERED_OUTPUT)`
              })
            )
          }
          return mailbox.offerAll(batch.chunks)
        }, { discard: true })
      const replay = Effect.suspend(() => Effect.flatMap(repo.chunksFrom(taskId, nextSeq), deliver))
      /** Catch up: replay batches not seen yet (of `chunkCount` so far); end if the task ended. */
      const catchUp = (chunkCount: number, ending: TaskEnding | undefined) =>
        Effect.gen(function*() {
          if (chunkCount >= nextSeq) yield* replay
          if (ending === undefined) return false
          yield* mailbox.end
          yield* Deferred.complete(result, outcome(ending))
          return true
        })
      const catchUpRow = (row: TaskRow) => catchUp(row.chunkCount, isTerminal(row.status) ? endingOf(row) : undefined)
      const check = Effect.flatMap(repo.find(taskId), (row) =>
        Option.isNone(row)
          ? Effect.as(
            // the row was deleted under the waiter: end its output too, or a reader of `chunks` waits forever
            Effect.zipRight(
              mailbox.end,
              Deferred.fail(result, new TaskCancelled({ message: `task '${taskId}' is gone` }))
            ),
            true
          )
          : catchUpRow(row.value))

      // Signals say what changed, so only a gap in the batches or a terminal
      // status costs a read; the poll re-reads in case a signal was missed.
      const onEvent = (event: TaskEvent) => {
        if (event._tag === "Chunks") {
          if (event.seq === nextSeq) return Effect.as(deliver([event]), false)
          return event.seq < nextSeq ? Effect.succeed(false) : check
        }
        if (event._tag === "Finished") return catchUp(event.ending.chunkCount, event.ending)
        return isTerminal(event.status) ? check : Effect.succeed(false)
      }

      const follow = Effect.gen(function*() {
        if (yield* catchUpRow(initialRow)) return
        while (true) {
          const event = yield* Queue.take(events).pipe(Effect.timeout(config.pollInterval), Effect.option)
          if (yield* (Option.isSome(event) ? onEvent(event.value) : check)) return
        }
      })
      const expire = Effect.gen(function*() {
        yield* Effect.sleep(timeout)
        yield* Deferred.fail(
          result,
          new Timeout({ message: `task '${taskId}' did not finish within ${Duration.format(timeout)}` })
        )
        yield* mailbox.end
      })
      yield* Effect.forkScoped(Effect.raceFirst(follow, expire))
      const chunks = Mailbox.toStream(mailbox).pipe(
        Stream.mapChunks((taken) => {
          for (const chunk of taken) buffered -= Buffer.byteLength(chunk)
          return taken
        })
      )
      return { chunks, result: Deferred.await(result) } satisfies Waiter
    })

  return {
    route,
    enqueue,
    get,
    findPendingForPools,
    list,
    submit,
    findByKey,
    claim,
    claimFor,
    ack,
    appendChunks,
    complete,
    fail,
    unacknowledged,
    cancel,
    abandon,
    revertHeldBy,
    startupRecovery,
    sweep,
    waitFor
  } satisfies TaskQueueShape
})

export class TaskQueue extends Context.Tag("llm-relay/TaskQueue")<TaskQueue, TaskQueueShape>() {
  /** Needs a `SqlClient`, `RelayConfig`, `InstanceId`, `Signals` and the `Registry`. */
  static readonly layer = Layer.effect(this, make).pipe(Layer.provide(TaskRepo.layer))
}
