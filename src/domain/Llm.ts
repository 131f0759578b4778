/**
 * The LLM registry's model: a row is `virtual` (served by a publisher session)
 * or `public` (a fixed upstream URL), `active` or `inactive`.
 */
import { HttpApiSchema } from "@effect/platform"
import { Schema } from "effect"

export const LlmId = Schema.String.pipe(Schema.brand("LlmId"))
export type LlmId = typeof LlmId.Type

export const SessionId = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9_-]{8,128}$/, {
    message: () => "sessionId must be 8-128 characters of A-Z, a-z, 0-9, _ or -"
  }),
  Schema.brand("SessionId")
)
export type SessionId = typeof SessionId.Type

export const LlmKind = Schema.Literal("virtual", "public")
export type LlmKind = typeof LlmKind.Type
export const LlmStatus = Schema.Literal("active", "inactive")
export type LlmStatus = typeof LlmStatus.Type

/**
 * The `Llm` view of PROTOCOL.md (absent values are `null`). A virtual row is
 * online when it is `active`, `healthy` and its session's task stream is open.
 */
export class Llm extends Schema.Class<Llm>("Llm")({
  id: LlmId,
  name: Schema.String,
  kind: LlmKind,
  type: Schema.String,
  model: Schema.String,
  pool: Schema.String,
  tier: Schema.String,
  description: Schema.String,
  status: LlmStatus,
  /** The publisher's last word on its upstream: an unhealthy row stays active but gets no tasks. */
  healthy: Schema.Boolean,
  providerSessionId: Schema.NullOr(Schema.String),
  lastHeartbeatAt: Schema.NullOr(Schema.Date),
  inactiveSince: Schema.NullOr(Schema.Date),
  maxConcurrent: Schema.Int,
  createdAt: Schema.Date,
  updatedAt: Schema.Date
}) {}

/**
 * A pool as `GET /v1/pools` shows it: the principal that owns it (null: the
 * admins', e.g. a pool of public LLMs), whether an admin opened it to other
 * principals' publishers, and its members' names.
 */
export class Pool extends Schema.Class<Pool>("Pool")({
  name: Schema.String,
  principalId: Schema.NullOr(Schema.String),
  shared: Schema.Boolean,
  members: Schema.Array(Schema.String),
  createdAt: Schema.Date,
  updatedAt: Schema.Date
}) {}

/** A row of `llms` as the database returns it (names camel-cased). */
export const LlmRow = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  kind: LlmKind,
  type: Schema.String,
  model: Schema.String,
  url: Schema.NullOr(Schema.String),
  apiKey: Schema.NullOr(Schema.String),
  pool: Schema.String,
  tier: Schema.String,
  description: Schema.String,
  providerSessionId: Schema.NullOr(Schema.String),
  /** The principal whose publisher registered it; null for a public LLM. */
  ownerId: Schema.NullOr(Schema.String),
  status: LlmStatus,
  /** Its session's task stream is open (on some instance). */
  streamOpen: Schema.Boolean,
  healthy: Schema.Boolean,
  healthReason: Schema.NullOr(Schema.String),
  /** Since when it has not been online without a goodbye (NULL when online or after a goodbye). */
  downSince: Schema.NullOr(Schema.DateFromSelf),
  lastHeartbeatAt: Schema.NullOr(Schema.DateFromSelf),
  inactiveSince: Schema.NullOr(Schema.DateFromSelf),
  maxConcurrent: Schema.Int,
  createdAt: Schema.DateFromSelf,
  updatedAt: Schema.DateFromSelf
})
export type LlmRow = typeof LlmRow.Type

export const llmFromRow = (row: LlmRow): Llm =>
  new Llm({
    id: LlmId.make(row.id),
    name: row.name,
    kind: row.kind,
    type: row.type,
    model: row.model,
    pool: row.pool,
    tier: row.tier,
    description: row.description,
    status: row.status,
    healthy: row.healthy,
    providerSessionId: row.providerSessionId,
    lastHeartbeatAt: row.lastHeartbeatAt,
    inactiveSince: row.inactiveSince,
    maxConcurrent: row.maxConcurrent,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt
  })

/** An LLM or provider name: 1..128 chars of `[A-Za-z0-9._:/-]`. */
export const LlmName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9._:/-]{1,128}$/, {
    message: () => "must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':', '/' or '-'"
  })
)

const BoundedText = (max: number) =>
  Schema.String.pipe(Schema.maxLength(max, { message: () => `must be at most ${max} characters` }))
const NonEmptyText = (max: number) => BoundedText(max).pipe(Schema.minLength(1, { message: () => "must not be empty" }))

/** One provider of a register request; defaults per PROTOCOL.md. */
export const ProviderSpec = Schema.Struct({
  name: LlmName,
  model: NonEmptyText(512),
  type: Schema.optionalWith(NonEmptyText(64), { default: () => "openai" }),
  pool: Schema.optional(LlmName),
  tier: Schema.optionalWith(NonEmptyText(64), { default: () => "fast" }),
  description: Schema.optionalWith(BoundedText(4096), { default: () => "" }),
  maxConcurrent: Schema.optionalWith(
    Schema.Int.pipe(
      Schema.between(1, 1024, { message: () => "maxConcurrent must be an integer from 1 to 1024" })
    ),
    { default: () => 4 }
  )
})
export type ProviderSpec = typeof ProviderSpec.Type

export const RegisterRequest = Schema.Struct({
  sessionId: Schema.optional(SessionId),
  providers: Schema.Array(ProviderSpec).pipe(
    Schema.minItems(1, { message: () => "providers must list 1 to 64 providers" }),
    Schema.maxItems(64, { message: () => "providers must list 1 to 64 providers" })
  )
})
export type RegisterRequest = typeof RegisterRequest.Type

export class Registration extends Schema.Class<Registration>("Registration")({
  sessionId: Schema.String,
  heartbeatIntervalMs: Schema.Int,
  heartbeatTimeoutMs: Schema.Int,
  llms: Schema.Array(Llm)
}) {}

export class NameConflict extends Schema.TaggedError<NameConflict>()(
  "NameConflict",
  { message: Schema.String, name: Schema.String },
  HttpApiSchema.annotations({ status: 409 })
) {}

export class LlmNotFound extends Schema.TaggedError<LlmNotFound>()(
  "LlmNotFound",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

export class SessionNotFound extends Schema.TaggedError<SessionNotFound>()(
  "SessionNotFound",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/** A publisher session as stored in `publisher_sessions`. */
export interface PublisherSession {
  readonly id: SessionId
  readonly principalId: string
  readonly instanceId: string | null
  /** The instance holding its task stream; null while none is open. */
  readonly streamInstanceId: string | null
  readonly lastHeartbeatAt: Date
}
