import { HttpApiEndpoint, HttpApiGroup } from "@effect/platform"
import { Schema } from "effect"
import { Task, TaskPath, TaskStatus } from "../../domain/Task.js"
import { ClientAuthorization } from "../Auth.js"
import { blank, limitParam } from "./params.js"
import { storable } from "./storable.js"

export const CreateTaskRequest = Schema.Struct({
  model: Schema.String.pipe(Schema.minLength(1, { message: () => "model must not be empty" })),
  path: Schema.optionalWith(TaskPath, { default: () => "/v1/chat/completions" as const }),
  body: Schema.Record({ key: Schema.String, value: Schema.Unknown }),
  agentId: Schema.optional(Schema.NullOr(Schema.String.pipe(Schema.maxLength(256)))),
  priority: Schema.optionalWith(
    Schema.Int.pipe(Schema.between(-100, 100, { message: () => "priority must be an integer from -100 to 100" })),
    { default: () => 0 }
  )
})

const IdPath = storable(Schema.Struct({ id: Schema.String }))

export const ListParams = Schema.Struct({
  status: Schema.optional(Schema.Union(blank, TaskStatus)),
  agentId: Schema.optional(Schema.String),
  limit: limitParam(500, 50),
  cursor: Schema.optional(Schema.String)
})

export const WaitParams = Schema.Struct({
  timeoutMs: Schema.optionalWith(
    Schema.NumberFromString.pipe(
      Schema.int(),
      Schema.between(0, 3_600_000, { message: () => "timeoutMs must be 0-3600000" })
    ),
    { default: () => 30_000 }
  )
})

/** The async task API (role client or admin; own tasks only, admin sees all). */
export class TasksApi extends HttpApiGroup.make("tasks")
  .add(
    HttpApiEndpoint.post("create", "/v1/tasks").setPayload(storable(CreateTaskRequest)).addSuccess(Task, {
      status: 202
    })
  )
  .add(
    HttpApiEndpoint.get("list", "/v1/tasks")
      .setUrlParams(storable(ListParams))
      .addSuccess(Schema.Struct({ data: Schema.Array(Task), nextCursor: Schema.NullOr(Schema.String) }))
  )
  .add(HttpApiEndpoint.get("get", "/v1/tasks/:id").setPath(IdPath).addSuccess(Task))
  .add(HttpApiEndpoint.get("wait", "/v1/tasks/:id/wait").setPath(IdPath).setUrlParams(WaitParams).addSuccess(Task))
  .add(HttpApiEndpoint.get("events", "/v1/tasks/:id/events").setPath(IdPath).addSuccess(Schema.String))
  .add(HttpApiEndpoint.del("cancel", "/v1/tasks/:id").setPath(IdPath).addSuccess(Task))
  .middleware(ClientAuthorization)
{}
