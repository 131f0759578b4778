import { HttpApiEndpoint, HttpApiGroup, HttpApiSchema } from "@effect/platform"
import { Schema } from "effect"
import { RegisterRequest, Registration } from "../../domain/Llm.js"
import { PublisherAuthorization } from "../Auth.js"
import { storable } from "./storable.js"

const SessionPath = storable(Schema.Struct({ sessionId: Schema.String }))
const TaskPath = storable(Schema.Struct({ sessionId: Schema.String, taskId: Schema.String }))
/**
 * The frame's `attempt`, on every post (PROTOCOL v1.1): it fences a post to
 * the dispatch it answers, so work of an earlier attempt that still posts
 * after a sticky reconnect is stale (409), never taken for the current one.
 */
const Attempt = Schema.Int.pipe(
  // a task is dispatched a handful of times; past int4 the fence's SQL would fail
  Schema.between(1, 2_147_483_647, { message: () => "attempt must be a positive integer (at most 2147483647)" }),
  Schema.annotations({ missingMessage: () => "attempt is required: the attempt of the task frame this post answers" })
)
/**
 * The status a client will get: a final answer (200-599). 1xx is not an
 * answer (a client reads `100 Continue` and waits for more).
 */
const HttpStatus = Schema.Int.pipe(
  Schema.between(200, 599, { message: () => "status must be a final HTTP status (200-599)" })
)
/** 204, 205 and 304 answers carry no body: one given with them could never reach the client. */
const bodiless = new Set([204, 205, 304])
const withBodyAllowed = <A extends { readonly status: number; readonly body?: unknown }, I>(
  schema: Schema.Schema<A, I>
) =>
  schema.pipe(
    Schema.filter((post) =>
      post.body !== undefined && post.body !== null && bodiless.has(post.status)
        ? { path: ["body"], message: `a status ${post.status} answer has no body; leave it out` }
        : undefined
    )
  )

export const AckPayload = Schema.Struct({ attempt: Attempt })
export const ChunksPayload = Schema.Struct({
  chunks: Schema.Array(Schema.String).pipe(Schema.maxItems(10_000)),
  attempt: Attempt
})
export const ResultPayload = withBodyAllowed(Schema.Struct({
  status: Schema.optionalWith(HttpStatus, { default: () => 200 }),
  body: Schema.optional(Schema.Unknown),
  attempt: Attempt
}))
export const ErrorPayload = Schema.Struct({
  message: Schema.String.pipe(Schema.maxLength(65_536)),
  status: Schema.optionalWith(HttpStatus, { default: () => 502 }),
  body: Schema.optional(Schema.Unknown),
  attempt: Attempt,
  /**
   * The upstream could not be reached before any output: the task goes back
   * to the queue for another member (ignored once output was sent).
   */
  retry: Schema.optionalWith(Schema.Boolean, { default: () => false })
})

/**
 * A heartbeat's optional body (v1.1): each provider's upstream health. No
 * body (or `{}`) is the old heartbeat; a provider left out keeps its health.
 */
export const HeartbeatPayload = Schema.NullOr(Schema.Struct({
  providers: Schema.optional(
    Schema.Record({
      key: Schema.String,
      value: Schema.Struct({
        healthy: Schema.Boolean,
        reason: Schema.optional(Schema.NullOr(Schema.String.pipe(Schema.maxLength(65_536))))
      })
    }).pipe(Schema.filter((r) => Object.keys(r).length <= 1024 || "providers: at most 1024 entries"))
  )
}))

const taskPost = <const Name extends string, A, I>(name: Name, segment: string, payload: Schema.Schema<A, I>) =>
  HttpApiEndpoint.post(name, `/v1/publishers/sessions/:sessionId/tasks/:taskId/${segment}`)
    .setPath(TaskPath)
    // the upstream's text: lone surrogates are replaced (by the handler), not refused
    .setPayload(storable(payload, { loneSurrogates: "allow" }))
    .addSuccess(HttpApiSchema.NoContent)

/** What a publisher process talks to (role publisher or admin). */
export class PublishersApi extends HttpApiGroup.make("publishers")
  .add(
    HttpApiEndpoint.post("register", "/v1/publishers/sessions").setPayload(storable(RegisterRequest)).addSuccess(
      Registration
    )
  )
  .add(
    HttpApiEndpoint.get("stream", "/v1/publishers/sessions/:sessionId/tasks")
      .setPath(SessionPath)
      .addSuccess(Schema.String.pipe(HttpApiSchema.withEncoding({ kind: "Text", contentType: "text/event-stream" })))
  )
  .add(
    HttpApiEndpoint.post("heartbeat", "/v1/publishers/sessions/:sessionId/heartbeat")
      .setPath(SessionPath)
      .setPayload(storable(HeartbeatPayload))
      .addSuccess(Schema.Struct({ ok: Schema.Literal(true) }))
  )
  .add(
    HttpApiEndpoint.del("goodbye", "/v1/publishers/sessions/:sessionId")
      .setPath(SessionPath)
      .addSuccess(HttpApiSchema.NoContent)
  )
  .add(taskPost("ack", "ack", AckPayload))
  .add(taskPost("chunks", "chunks", ChunksPayload))
  .add(taskPost("result", "result", ResultPayload))
  .add(taskPost("error", "error", ErrorPayload))
  .middleware(PublisherAuthorization)
{}
