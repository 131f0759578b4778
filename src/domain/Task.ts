/**
 * The inference task: one request, durable in `inference_tasks`, moving
 * `pending -> claimed -> running -> completed | error | cancelled`
 * (`claimed | running` without output may revert to `pending`).
 */
import { HttpApiSchema } from "@effect/platform"
import { Schema } from "effect"

export const TaskId = Schema.String.pipe(Schema.brand("TaskId"))
export type TaskId = typeof TaskId.Type

export const TaskStatus = Schema.Literal("pending", "claimed", "running", "completed", "error", "cancelled")
export type TaskStatus = typeof TaskStatus.Type
export const terminalStatuses: ReadonlyArray<TaskStatus> = ["completed", "error", "cancelled"]
export const isTerminal = (status: TaskStatus): boolean => terminalStatuses.includes(status)

/** The routes a task may carry (the OpenAI-compatible inference routes). */
export const TaskPath = Schema.Literal("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
export type TaskPath = typeof TaskPath.Type

/** The `Task` view of PROTOCOL.md. */
export class Task extends Schema.Class<Task>("Task")({
  id: TaskId,
  status: TaskStatus,
  model: Schema.String,
  pool: Schema.String,
  llmName: Schema.NullOr(Schema.String),
  path: Schema.String,
  streaming: Schema.Boolean,
  priority: Schema.Int,
  ownerId: Schema.String,
  agentId: Schema.NullOr(Schema.String),
  claimedBy: Schema.NullOr(Schema.String),
  attempts: Schema.Int,
  createdAt: Schema.Date,
  claimedAt: Schema.NullOr(Schema.Date),
  streamStartedAt: Schema.NullOr(Schema.Date),
  completedAt: Schema.NullOr(Schema.Date),
  responseStatus: Schema.NullOr(Schema.Int),
  responseBody: Schema.NullOr(Schema.Unknown),
  errorMessage: Schema.NullOr(Schema.String)
}) {}

// ---- errors (tags are the protocol's error types) ----

export class ModelNotFound extends Schema.TaggedError<ModelNotFound>()(
  "ModelNotFound",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/** The model names a `public` LLM where a virtual one (a publisher) was required. */
export class NotVirtual extends Schema.TaggedError<NotVirtual>()(
  "NotVirtual",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

export class TaskNotFound extends Schema.TaggedError<TaskNotFound>()(
  "TaskNotFound",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/** A publisher posted for a task its session (or this attempt) does not hold. */
export class TaskNotHeld extends Schema.TaggedError<TaskNotHeld>()(
  "TaskNotHeld",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 409 })
) {}

/** The task was cancelled: a publisher must stop work; a waiter gets this too. */
export class TaskCancelled extends Schema.TaggedError<TaskCancelled>()(
  "TaskCancelled",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 410 })
) {}

/**
 * A transition was asked of a task already completed/errored/cancelled. Not a
 * protocol error (no status): the queue tells it from TaskNotHeld, the
 * publisher routes answer both as TaskNotHeld.
 */
export class TaskAlreadyTerminal extends Schema.TaggedError<TaskAlreadyTerminal>()(
  "TaskAlreadyTerminal",
  { message: Schema.String }
) {}

export class PublisherOffline extends Schema.TaggedError<PublisherOffline>()(
  "PublisherOffline",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

export class PublisherDisconnected extends Schema.TaggedError<PublisherDisconnected>()(
  "PublisherDisconnected",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 502 })
) {}

export class Timeout extends Schema.TaggedError<Timeout>()(
  "Timeout",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 504 })
) {}

/** The publisher reported an upstream failure: its status is passed through. */
export class UpstreamError extends Schema.TaggedError<UpstreamError>()("UpstreamError", {
  message: Schema.String,
  status: Schema.Int,
  body: Schema.optional(Schema.Unknown)
}) {}

/** Why a task ended `error`, as stored in `inference_tasks.error_type`. */
export const TaskErrorType = Schema.Literal(
  "UpstreamError",
  "PublisherDisconnected",
  "Timeout",
  "Expired",
  "MaxAttempts"
)
export type TaskErrorType = typeof TaskErrorType.Type
