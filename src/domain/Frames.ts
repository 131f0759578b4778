/**
 * What the broker sends a publisher session on its task stream (PROTOCOL.md
 * "the task stream"). The HTTP layer writes each as one SSE event:
 * `event: <_tag>` with the rest as JSON `data`.
 */
import { Schema } from "effect"

export const TaskFrame = Schema.TaggedStruct("task", {
  kind: Schema.Literal("infer"),
  taskId: Schema.String,
  attempt: Schema.Int,
  llmName: Schema.String,
  model: Schema.String,
  path: Schema.String,
  streaming: Schema.Boolean,
  body: Schema.Unknown
})
export type TaskFrame = typeof TaskFrame.Type

export const CancelFrame = Schema.TaggedStruct("cancel", {
  taskId: Schema.String,
  reason: Schema.String
})
export type CancelFrame = typeof CancelFrame.Type

export const Frame = Schema.Union(TaskFrame, CancelFrame)
export type Frame = typeof Frame.Type
