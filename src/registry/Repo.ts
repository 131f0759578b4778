/**
 * SQL of the LLM registry (`llms`, `publisher_sessions`). Every statement is
 * visible here; the service decides which run together in one transaction.
 * Times are parameters taken from `Clock` by the caller.
 */
import { SqlClient } from "@effect/sql"
import { Context, Effect, Layer, Option, Schema } from "effect"
import * as Crypto from "node:crypto"
import { LlmRow, type ProviderSpec, type PublisherSession, SessionId } from "../domain/Llm.js"

const decodeRows = Schema.decodeUnknown(Schema.Array(LlmRow))
const SessionRow = Schema.Struct({
  id: Schema.String,
  principalId: Schema.String,
  instanceId: Schema.NullOr(Schema.String),
  lastHeartbeatAt: Schema.DateFromSelf
})
const decodeSessions = Schema.decodeUnknown(Schema.Array(SessionRow))

export interface PublicLlmSpec {
  readonly name: string
  readonly model: string
  readonly url: string
  readonly apiKey?: string | undefined
  readonly pool?: string | undefined
  readonly tier: string
  readonly description: string
}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const rows = <E, R>(query: Effect.Effect<ReadonlyArray<unknown>, E, R>) =>
    query.pipe(Effect.flatMap(decodeRows), Effect.orDie)

  const all = rows(sql`SELECT * FROM llm_relay.llms ORDER BY name`)
  const findByName = (name: string) =>
    rows(sql`SELECT * FROM llm_relay.llms WHERE name = ${name}`).pipe(Effect.map((r) => Option.fromNullable(r[0])))
  /** Members of a pool, or the row of that name: what a `model` resolves to. */
  const findByNameOrPool = (name: string) => rows(sql`SELECT * FROM llm_relay.llms WHERE name = ${name} OR pool = ${name}`)
  const findBySession = (sessionId: string) =>
    rows(sql`SELECT * FROM llm_relay.llms WHERE provider_session_id = ${sessionId} ORDER BY name`)
  /** Locks the named rows so concurrent registrations of one name serialize. */
  const lockByNames = (names: ReadonlyArray<string>) =>
    rows(sql`SELECT * FROM llm_relay.llms WHERE name = ANY(${names}) ORDER BY name FOR UPDATE`)

  /** Insert a new virtual row; `None` when a concurrent registration took the name first. */
  const insertVirtual = (spec: ProviderSpec, sessionId: string, now: Date) =>
    rows(sql`
      INSERT INTO llm_relay.llms (id, name, kind, type, model, pool, tier, description, provider_session_id,
                        status, last_heartbeat_at, inactive_since, max_concurrent, created_at, updated_at)
      VALUES (${Crypto.randomUUID()}, ${spec.name}, 'virtual', ${spec.type}, ${spec.model},
              ${spec.pool ?? spec.name}, ${spec.tier}, ${spec.description}, ${sessionId},
              'active', ${now}, NULL, ${spec.maxConcurrent}, ${now}, ${now})
      ON CONFLICT (name) DO NOTHING
      RETURNING *`).pipe(Effect.map((r) => Option.fromNullable(r[0])))

  /** Update in place or adopt: same `id`, now owned by `sessionId` and active. */
  const claimRow = (id: string, spec: ProviderSpec, sessionId: string, now: Date) =>
    rows(sql`
      UPDATE llm_relay.llms SET type = ${spec.type}, model = ${spec.model}, pool = ${spec.pool ?? spec.name},
        tier = ${spec.tier}, description = ${spec.description}, max_concurrent = ${spec.maxConcurrent},
        provider_session_id = ${sessionId}, status = 'active', last_heartbeat_at = ${now},
        inactive_since = NULL, version = version + 1, updated_at = ${now}
      WHERE id = ${id} AND kind = 'virtual'
      RETURNING *`).pipe(Effect.map((r) => r[0]!))

  /**
   * Rows the session held but no longer lists go inactive and leave the
   * session, so its stream or heartbeat does not revive them (listing the name
   * again adopts the row, same `id`).
   */
  const deactivateUnlisted = (sessionId: string, keep: ReadonlyArray<string>, now: Date) =>
    rows(sql`
      UPDATE llm_relay.llms SET provider_session_id = NULL, updated_at = ${now},
        status = 'inactive', inactive_since = CASE WHEN status = 'active' THEN ${now} ELSE inactive_since END
      WHERE provider_session_id = ${sessionId} AND kind = 'virtual'
        AND NOT (name = ANY(${keep}))
      RETURNING *`)

  const heartbeat = (sessionId: string, now: Date) =>
    Effect.zipRight(
      sql`UPDATE llm_relay.publisher_sessions SET last_heartbeat_at = ${now} WHERE id = ${sessionId}`,
      rows(sql`
        UPDATE llm_relay.llms SET last_heartbeat_at = ${now}, status = 'active', inactive_since = NULL,
          updated_at = CASE WHEN status = 'inactive' THEN ${now} ELSE updated_at END
        WHERE provider_session_id = ${sessionId} AND kind = 'virtual'
        RETURNING *`)
    ).pipe(Effect.orDie)

  const activateSession = (sessionId: string, now: Date) =>
    rows(sql`
      UPDATE llm_relay.llms SET status = 'active', inactive_since = NULL, last_heartbeat_at = ${now}, updated_at = ${now}
      WHERE provider_session_id = ${sessionId} AND kind = 'virtual'
      RETURNING *`)

  /** Only rows still active flip, so `inactive_since` keeps the first moment. */
  const deactivateSession = (sessionId: string, now: Date) =>
    rows(sql`
      UPDATE llm_relay.llms SET status = 'inactive', inactive_since = ${now}, updated_at = ${now}
      WHERE provider_session_id = ${sessionId} AND kind = 'virtual' AND status = 'active'
      RETURNING *`)

  /** After a restart: rows of sessions no live broker serves (not of this instance) go inactive. */
  const deactivateForeign = (instanceId: string, now: Date) =>
    rows(sql`
      UPDATE llm_relay.llms SET status = 'inactive', inactive_since = ${now}, updated_at = ${now}
      WHERE kind = 'virtual' AND status = 'active'
        AND (provider_session_id IS NULL OR provider_session_id NOT IN
             (SELECT id FROM llm_relay.publisher_sessions WHERE instance_id = ${instanceId}))
      RETURNING *`)

  /** Active virtual rows whose last heartbeat is older than the cutoff go inactive. */
  const deactivateStale = (heartbeatCutoff: Date, now: Date) =>
    rows(sql`
      UPDATE llm_relay.llms SET status = 'inactive', inactive_since = ${now}, updated_at = ${now}
      WHERE kind = 'virtual' AND status = 'active' AND last_heartbeat_at < ${heartbeatCutoff}
      RETURNING *`)

  const deleteExpiredInactive = (inactiveCutoff: Date) =>
    rows(sql`
      DELETE FROM llm_relay.llms
      WHERE kind = 'virtual' AND status = 'inactive' AND inactive_since < ${inactiveCutoff}
      RETURNING *`)

  /** A public LLM row; None when the name is taken. */
  const insertPublic = (input: PublicLlmSpec, now: Date) =>
    rows(sql`
      INSERT INTO llm_relay.llms (id, name, kind, type, model, url, api_key, pool, tier, description, status,
                        max_concurrent, created_at, updated_at)
      VALUES (${Crypto.randomUUID()}, ${input.name}, 'public', 'openai', ${input.model}, ${input.url},
              ${input.apiKey ?? null}, ${input.pool ?? input.name}, ${input.tier}, ${input.description},
              'active', 1024, ${now}, ${now})
      ON CONFLICT (name) DO NOTHING
      RETURNING *`).pipe(Effect.map((r) => Option.fromNullable(r[0])))

  const deleteByName = (name: string) => rows(sql`DELETE FROM llm_relay.llms WHERE name = ${name} RETURNING *`)

  const findSession = (sessionId: string) =>
    sql`SELECT id, principal_id, instance_id, last_heartbeat_at FROM llm_relay.publisher_sessions WHERE id = ${sessionId}`.pipe(
      Effect.flatMap(decodeSessions),
      Effect.orDie,
      Effect.map((r) =>
        Option.map(Option.fromNullable(r[0]), (s): PublisherSession => ({ ...s, id: SessionId.make(s.id) }))
      )
    )

  /** Locks the session row: register, unbind and heartbeat of one session serialize on it. */
  const lockSession = (sessionId: string) =>
    sql`SELECT id, principal_id, instance_id, last_heartbeat_at FROM llm_relay.publisher_sessions WHERE id = ${sessionId} FOR UPDATE`.pipe(
      Effect.flatMap(decodeSessions),
      Effect.orDie,
      Effect.map((r) => Option.fromNullable(r[0]))
    )

  const upsertSession = (sessionId: string, principalId: string, instanceId: string, now: Date) =>
    sql`
      INSERT INTO llm_relay.publisher_sessions (id, principal_id, instance_id, connected_at, last_heartbeat_at, created_at)
      VALUES (${sessionId}, ${principalId}, ${instanceId}, ${now}, ${now}, ${now})
      ON CONFLICT (id) DO UPDATE SET instance_id = EXCLUDED.instance_id, last_heartbeat_at = EXCLUDED.last_heartbeat_at
      WHERE publisher_sessions.principal_id = EXCLUDED.principal_id
      RETURNING id`.pipe(Effect.orDie, Effect.map((r) => r.length > 0))

  return {
    all,
    findByName,
    findByNameOrPool,
    findBySession,
    lockByNames,
    insertVirtual,
    claimRow,
    deactivateUnlisted,
    heartbeat,
    activateSession,
    deactivateSession,
    deactivateForeign,
    deactivateStale,
    deleteExpiredInactive,
    insertPublic,
    deleteByName,
    findSession,
    lockSession,
    upsertSession
  } as const
})

export class RegistryRepo extends Context.Tag("llm-relay/RegistryRepo")<
  RegistryRepo,
  Effect.Effect.Success<typeof make>
>() {
  static readonly layer = Layer.effect(this, make)
}
