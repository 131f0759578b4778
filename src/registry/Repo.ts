/**
 * SQL of the LLM registry (`llm_relay.llms`, `llm_relay.publisher_sessions`).
 * Every statement is visible here; the service decides which run together in
 * one transaction. Times are parameters taken from `Clock` by the caller. Rows
 * are decoded with `SqlSchema` (pg hands `timestamptz` over as `Date`); a row
 * that does not decode is a defect.
 */
import { SqlClient, SqlSchema } from "@effect/sql"
import { Context, Effect, Layer, Option, Schema } from "effect"
import * as Crypto from "node:crypto"
import { LlmRow, ProviderSpec, type PublisherSession, SessionId } from "../domain/Llm.js"

/** A row of `llm_relay.publisher_sessions` (the columns the broker reads). */
const SessionRow = Schema.Struct({
  id: SessionId,
  principalId: Schema.String,
  instanceId: Schema.NullOr(Schema.String),
  streamInstanceId: Schema.NullOr(Schema.String),
  lastHeartbeatAt: Schema.DateFromSelf
})

export const PublicLlmSpec = Schema.Struct({
  name: Schema.String,
  model: Schema.String,
  url: Schema.String,
  apiKey: Schema.optional(Schema.String),
  pool: Schema.optional(Schema.String),
  tier: Schema.String,
  description: Schema.String
})
export type PublicLlmSpec = typeof PublicLlmSpec.Type

/** One provider's health as a heartbeat reports it. */
export interface ProviderHealth {
  readonly name: string
  readonly healthy: boolean
  readonly reason: string | null
}

export interface RegistryRepoShape {
  readonly all: Effect.Effect<ReadonlyArray<LlmRow>>
  readonly findByName: (name: string) => Effect.Effect<Option.Option<LlmRow>>
  /** Up to `limit` rows by name, after `after` (exclusive). */
  readonly page: (after: string | null, limit: number) => Effect.Effect<ReadonlyArray<LlmRow>>
  /** Members of a pool, or the row of that name: what a `model` resolves to. */
  readonly findByNameOrPool: (name: string) => Effect.Effect<ReadonlyArray<LlmRow>>
  readonly findBySession: (sessionId: string) => Effect.Effect<ReadonlyArray<LlmRow>>
  /** Locks the named rows so concurrent registrations of one name serialize. */
  readonly lockByNames: (names: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<LlmRow>>
  /** Insert a new virtual row; `None` when a concurrent registration took the name first. */
  readonly insertVirtual: (
    spec: ProviderSpec,
    owner: SessionOwner,
    streamOpen: boolean,
    now: Date
  ) => Effect.Effect<Option.Option<LlmRow>>
  /** Update in place or adopt: same `id`, now served by the session, active and healthy. */
  readonly claimRow: (
    id: string,
    spec: ProviderSpec,
    owner: SessionOwner,
    streamOpen: boolean,
    now: Date
  ) => Effect.Effect<LlmRow>
  /** Locks the pool rows of these names (shared: registrations read them, an admin's PUT writes them). */
  readonly lockPools: (names: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<PoolRow>>
  /** Records a pool's owner unless the pool exists; the pool as stored either way. */
  readonly ensurePool: (name: string, ownerId: string | null, now: Date) => Effect.Effect<PoolRow>
  readonly setShared: (name: string, shared: boolean, now: Date) => Effect.Effect<Option.Option<PoolRow>>
  /** How many rows the principal owns besides the named ones. */
  readonly countOwnedExcept: (principalId: string, names: ReadonlyArray<string>) => Effect.Effect<number>
  /** Every pool with its members' names, by name. */
  readonly pools: Effect.Effect<ReadonlyArray<PoolWithMembers>>
  /** One pool with its members' names. */
  readonly pool: (name: string) => Effect.Effect<Option.Option<PoolWithMembers>>
  readonly deactivateUnlisted: (
    sessionId: string,
    keep: ReadonlyArray<string>,
    now: Date
  ) => Effect.Effect<ReadonlyArray<LlmRow>>
  readonly heartbeat: (sessionId: string, now: Date) => Effect.Effect<ReadonlyArray<LlmRow>>
  /**
   * Stores what the publisher reported about its providers' upstreams (names
   * of other sessions, or unknown, are ignored); returns the rows whose health
   * changed.
   */
  readonly reportHealth: (
    sessionId: string,
    reports: ReadonlyArray<ProviderHealth>,
    now: Date
  ) => Effect.Effect<ReadonlyArray<LlmRow>>
  /** The session's stream opened on `instanceId`: its rows are active and streaming. */
  readonly activateSession: (sessionId: string, instanceId: string, now: Date) => Effect.Effect<ReadonlyArray<LlmRow>>
  /** The session's stream is gone: rows inactive; `goodbye` says whether it left on purpose (no grace). */
  readonly deactivateSession: (sessionId: string, goodbye: boolean, now: Date) => Effect.Effect<ReadonlyArray<LlmRow>>
  readonly deactivateForeign: (instanceId: string, now: Date) => Effect.Effect<ReadonlyArray<LlmRow>>
  readonly deactivateStale: (heartbeatCutoff: Date, now: Date) => Effect.Effect<ReadonlyArray<LlmRow>>
  readonly deleteExpiredInactive: (inactiveCutoff: Date) => Effect.Effect<ReadonlyArray<LlmRow>>
  /** Sessions silent since before the cutoff with no stream, no row and no held task: deleted, their ids. */
  readonly deleteIdleSessions: (cutoff: Date) => Effect.Effect<ReadonlyArray<string>>
  /** A public LLM row; None when the name is taken. */
  readonly insertPublic: (input: PublicLlmSpec, now: Date) => Effect.Effect<Option.Option<LlmRow>>
  readonly deleteByName: (name: string) => Effect.Effect<ReadonlyArray<LlmRow>>
  readonly findSession: (sessionId: string) => Effect.Effect<Option.Option<PublisherSession>>
  /** The ids of a principal's sessions. */
  readonly sessionsOf: (principalId: string) => Effect.Effect<ReadonlyArray<string>>
  /** Locks the session row: register, unbind and heartbeat of one session serialize on it. */
  readonly lockSession: (sessionId: string) => Effect.Effect<Option.Option<PublisherSession>>
  /** Creates or takes over the session row; false when it belongs to another principal. */
  readonly upsertSession: (
    sessionId: string,
    principalId: string,
    instanceId: string,
    now: Date
  ) => Effect.Effect<boolean>
}

/** A row of `llm_relay.pools`. */
export const PoolRow = Schema.Struct({
  name: Schema.String,
  ownerId: Schema.NullOr(Schema.String),
  shared: Schema.Boolean,
  createdAt: Schema.DateFromSelf,
  updatedAt: Schema.DateFromSelf
})
export type PoolRow = typeof PoolRow.Type

export const PoolWithMembers = Schema.Struct({ ...PoolRow.fields, members: Schema.Array(Schema.String) })
export type PoolWithMembers = typeof PoolWithMembers.Type

/** The session a registration writes rows for, and its principal (the rows' owner). */
export interface SessionOwner {
  readonly sessionId: string
  readonly principalId: string
}

const At = Schema.DateFromSelf
const Owner = Schema.Struct({ sessionId: Schema.String, principalId: Schema.String })
/** A provider as registration decoded it (its defaults applied): encoding it changes nothing. */
const Provider = Schema.typeSchema(ProviderSpec)
/** A session's rows at a moment: the request of most statements below. */
const SessionAt = Schema.Struct({ sessionId: Schema.String, now: At })

export const make: Effect.Effect<RegistryRepoShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  /** A statement returning `llms` rows, decoded; its failures are defects. */
  const llmRows = <I, IA>(
    Request: Schema.Schema<I, IA>,
    execute: (request: IA) => Effect.Effect<ReadonlyArray<unknown>, unknown>
  ) => {
    const run = SqlSchema.findAll({ Request, Result: LlmRow, execute })
    return (request: I) => Effect.orDie(run(request))
  }
  /** The same, for a statement that returns at most one row. */
  const llmRow = <I, IA>(
    Request: Schema.Schema<I, IA>,
    execute: (request: IA) => Effect.Effect<ReadonlyArray<unknown>, unknown>
  ) => {
    const run = SqlSchema.findOne({ Request, Result: LlmRow, execute })
    return (request: I) => Effect.orDie(run(request))
  }

  const all = llmRows(Schema.Void, () => sql`SELECT * FROM llm_relay.llms ORDER BY name`)(undefined)
  const findByName = llmRow(Schema.String, (name) => sql`SELECT * FROM llm_relay.llms WHERE name = ${name}`)
  const pageRows = llmRows(
    Schema.Struct({ after: Schema.NullOr(Schema.String), limit: Schema.Int }),
    ({ after, limit }) =>
      after === null
        ? sql`SELECT * FROM llm_relay.llms ORDER BY name LIMIT ${limit}`
        : sql`SELECT * FROM llm_relay.llms WHERE name > ${after} ORDER BY name LIMIT ${limit}`
  )
  const page = (after: string | null, limit: number) => pageRows({ after, limit })
  const findByNameOrPool = llmRows(
    Schema.String,
    (name) => sql`SELECT * FROM llm_relay.llms WHERE name = ${name} OR pool = ${name}`
  )
  const findBySession = llmRows(
    Schema.String,
    (sessionId) => sql`SELECT * FROM llm_relay.llms WHERE provider_session_id = ${sessionId} ORDER BY name`
  )
  const lockByNames = llmRows(
    Schema.Array(Schema.String),
    (names) => sql`SELECT * FROM llm_relay.llms WHERE name = ANY(${names}) ORDER BY name FOR UPDATE`
  )

  const insertVirtualRow = llmRow(
    Schema.Struct({ spec: Provider, owner: Owner, streamOpen: Schema.Boolean, now: At }),
    ({ now, owner, spec, streamOpen }) =>
      sql`
      INSERT INTO llm_relay.llms (id, name, kind, type, model, pool, tier, description, provider_session_id,
                        owner_id, status, last_heartbeat_at, inactive_since, max_concurrent, created_at,
                        updated_at, stream_open, healthy, down_since)
      VALUES (${Crypto.randomUUID()}, ${spec.name}, 'virtual', ${spec.type}, ${spec.model},
              ${spec.pool ?? spec.name}, ${spec.tier}, ${spec.description}, ${owner.sessionId},
              ${owner.principalId}, 'active', ${now}, NULL, ${spec.maxConcurrent}, ${now}, ${now},
              ${streamOpen}, true, ${streamOpen ? null : now})
      ON CONFLICT (name) DO NOTHING
      RETURNING *`
  )
  const insertVirtual = (spec: ProviderSpec, owner: SessionOwner, streamOpen: boolean, now: Date) =>
    insertVirtualRow({ spec, owner, streamOpen, now })

  const claimLlmRow = SqlSchema.single({
    Request: Schema.Struct({
      id: Schema.String,
      spec: Provider,
      owner: Owner,
      streamOpen: Schema.Boolean,
      now: At
    }),
    Result: LlmRow,
    execute: ({ id, now, owner, spec, streamOpen }) =>
      sql`
      UPDATE llm_relay.llms SET type = ${spec.type}, model = ${spec.model}, pool = ${spec.pool ?? spec.name},
        tier = ${spec.tier}, description = ${spec.description}, max_concurrent = ${spec.maxConcurrent},
        provider_session_id = ${owner.sessionId}, owner_id = ${owner.principalId},
        status = 'active', last_heartbeat_at = ${now},
        inactive_since = NULL, version = version + 1, updated_at = ${now},
        stream_open = ${streamOpen}, healthy = true, health_reason = NULL,
        down_since = CASE WHEN ${streamOpen} THEN NULL ELSE COALESCE(down_since, ${now}) END
      WHERE id = ${id} AND kind = 'virtual'
      RETURNING *`
  })
  const claimRow = (id: string, spec: ProviderSpec, owner: SessionOwner, streamOpen: boolean, now: Date) =>
    Effect.orDie(claimLlmRow({ id, spec, owner, streamOpen, now }))

  const lockPoolRows = SqlSchema.findAll({
    Request: Schema.Array(Schema.String),
    Result: PoolRow,
    execute: (names) => sql`SELECT * FROM llm_relay.pools WHERE name = ANY(${names}) ORDER BY name FOR SHARE`
  })
  const lockPools = (names: ReadonlyArray<string>) => Effect.orDie(lockPoolRows(names))

  const insertPool = SqlSchema.findOne({
    Request: Schema.Struct({ name: Schema.String, ownerId: Schema.NullOr(Schema.String), now: At }),
    Result: PoolRow,
    execute: ({ name, now, ownerId }) =>
      sql`
      INSERT INTO llm_relay.pools (name, owner_id, shared, created_at, updated_at)
      VALUES (${name}, ${ownerId}, false, ${now}, ${now})
      ON CONFLICT (name) DO NOTHING
      RETURNING *`
  })
  const findPool = SqlSchema.single({
    Request: Schema.String,
    Result: PoolRow,
    execute: (name) => sql`SELECT * FROM llm_relay.pools WHERE name = ${name} FOR SHARE`
  })
  /** A pool inserted meanwhile by another registration is read once that one commits. */
  const ensurePool = (name: string, ownerId: string | null, now: Date) =>
    insertPool({ name, ownerId, now }).pipe(
      Effect.flatMap(Option.match({ onNone: () => findPool(name), onSome: Effect.succeed })),
      Effect.orDie
    )

  const setSharedRow = SqlSchema.findOne({
    Request: Schema.Struct({ name: Schema.String, shared: Schema.Boolean, now: At }),
    Result: PoolRow,
    execute: ({ name, now, shared }) =>
      sql`UPDATE llm_relay.pools SET shared = ${shared}, updated_at = ${now} WHERE name = ${name} RETURNING *`
  })
  const setShared = (name: string, shared: boolean, now: Date) => Effect.orDie(setSharedRow({ name, shared, now }))

  const poolRows = SqlSchema.findAll({
    Request: Schema.NullOr(Schema.String),
    Result: PoolWithMembers,
    execute: (name) =>
      sql`
      SELECT p.*, COALESCE(array_agg(l.name ORDER BY l.name) FILTER (WHERE l.name IS NOT NULL), '{}') AS members
      FROM llm_relay.pools p LEFT JOIN llm_relay.llms l ON l.pool = p.name
      ${name === null ? sql`` : sql`WHERE p.name = ${name}`}
      GROUP BY p.name ORDER BY p.name`
  })
  const pools = Effect.orDie(poolRows(null))
  const pool = (name: string) => Effect.map(Effect.orDie(poolRows(name)), (rows) => Option.fromNullable(rows[0]))

  const countOwned = SqlSchema.single({
    Request: Schema.Struct({ principalId: Schema.String, names: Schema.Array(Schema.String) }),
    Result: Schema.Struct({ n: Schema.Int }),
    execute: ({ names, principalId }) =>
      sql`SELECT count(*)::int AS n FROM llm_relay.llms WHERE owner_id = ${principalId} AND NOT (name = ANY(${names}))`
  })
  const countOwnedExcept = (principalId: string, names: ReadonlyArray<string>) =>
    countOwned({ principalId, names }).pipe(Effect.map(({ n }) => n), Effect.orDie)

  /**
   * Rows the session held but no longer lists go inactive and leave the
   * session, so its stream or heartbeat does not revive them (listing the name
   * again adopts the row, same `id`).
   */
  const deactivateUnlistedRows = llmRows(
    Schema.Struct({ sessionId: Schema.String, keep: Schema.Array(Schema.String), now: At }),
    ({ keep, now, sessionId }) =>
      sql`
      UPDATE llm_relay.llms SET provider_session_id = NULL, updated_at = ${now}, stream_open = false, down_since = NULL,
        status = 'inactive', inactive_since = CASE WHEN status = 'active' THEN ${now} ELSE inactive_since END
      WHERE provider_session_id = ${sessionId} AND kind = 'virtual'
        AND NOT (name = ANY(${keep}))
      RETURNING *`
  )
  const deactivateUnlisted = (sessionId: string, keep: ReadonlyArray<string>, now: Date) =>
    deactivateUnlistedRows({ sessionId, keep, now })

  const touchSession = SqlSchema.void({
    Request: SessionAt,
    execute: ({ now, sessionId }) =>
      sql`UPDATE llm_relay.publisher_sessions SET last_heartbeat_at = ${now} WHERE id = ${sessionId}`
  })
  const heartbeatRows = llmRows(SessionAt, ({ now, sessionId }) =>
    sql`
      UPDATE llm_relay.llms SET last_heartbeat_at = ${now}, status = 'active', inactive_since = NULL,
        updated_at = CASE WHEN status = 'inactive' THEN ${now} ELSE updated_at END,
        down_since = CASE WHEN stream_open AND healthy THEN NULL ELSE COALESCE(down_since, ${now}) END
      WHERE provider_session_id = ${sessionId} AND kind = 'virtual'
      RETURNING *`)
  const heartbeat = (sessionId: string, now: Date) =>
    Effect.zipRight(Effect.orDie(touchSession({ sessionId, now })), heartbeatRows({ sessionId, now }))

  /**
   * Only rows whose report differs are written (and returned), so a publisher
   * repeating its health in every heartbeat costs no write. An unhealthy row
   * is down from the first such report (its pool reconnecting for the grace);
   * a healthy one with its stream open and active is online again.
   */
  const reportHealthRows = llmRows(
    Schema.Struct({ sessionId: Schema.String, reports: Schema.String, now: At }),
    ({ now, reports, sessionId }) =>
      sql`
      UPDATE llm_relay.llms l SET healthy = r.healthy,
        health_reason = CASE WHEN r.healthy THEN NULL ELSE r.reason END,
        down_since = CASE WHEN NOT r.healthy THEN COALESCE(l.down_since, ${now})
                          WHEN l.stream_open AND l.status = 'active' THEN NULL
                          ELSE l.down_since END,
        updated_at = ${now}
      FROM jsonb_to_recordset(${reports}::jsonb) AS r(name text, healthy boolean, reason text)
      WHERE l.provider_session_id = ${sessionId} AND l.kind = 'virtual' AND l.name = r.name
        AND (l.healthy IS DISTINCT FROM r.healthy OR (NOT r.healthy AND l.health_reason IS DISTINCT FROM r.reason))
      RETURNING l.*`
  )
  const reportHealth = (sessionId: string, reports: ReadonlyArray<ProviderHealth>, now: Date) =>
    reports.length === 0
      ? Effect.succeed([])
      : reportHealthRows({ sessionId, reports: JSON.stringify(reports), now })

  /** The session row records the instance holding its stream; its rows are active and streaming. */
  const activateRows = llmRows(
    Schema.Struct({ sessionId: Schema.String, instanceId: Schema.String, now: At }),
    ({ instanceId, now, sessionId }) =>
      sql`
      WITH s AS (
        UPDATE llm_relay.publisher_sessions SET stream_instance_id = ${instanceId}, connected_at = ${now}
        WHERE id = ${sessionId}
      )
      UPDATE llm_relay.llms SET status = 'active', inactive_since = NULL, last_heartbeat_at = ${now}, updated_at = ${now},
        stream_open = true, down_since = CASE WHEN healthy THEN NULL ELSE COALESCE(down_since, ${now}) END
      WHERE provider_session_id = ${sessionId} AND kind = 'virtual'
      RETURNING *`
  )
  const activateSession = (sessionId: string, instanceId: string, now: Date) =>
    activateRows({ sessionId, instanceId, now })

  /**
   * Every row of the session stops streaming; rows still active go inactive
   * (so `inactive_since` keeps the first moment). A goodbye clears
   * `down_since` (no grace: the pool is offline at once); a lost stream keeps
   * the first moment it went down.
   */
  const deactivateRows = llmRows(
    Schema.Struct({ sessionId: Schema.String, goodbye: Schema.Boolean, now: At }),
    ({ goodbye, now, sessionId }) =>
      sql`
      WITH s AS (
        UPDATE llm_relay.publisher_sessions SET stream_instance_id = NULL WHERE id = ${sessionId}
      )
      UPDATE llm_relay.llms SET status = 'inactive', stream_open = false,
        inactive_since = CASE WHEN status = 'active' THEN ${now} ELSE inactive_since END,
        updated_at = ${now},
        down_since = CASE WHEN ${goodbye} THEN NULL ELSE COALESCE(down_since, ${now}) END
      WHERE provider_session_id = ${sessionId} AND kind = 'virtual'
        AND (status = 'active' OR stream_open OR down_since IS NOT NULL)
      RETURNING *`
  )
  const deactivateSession = (sessionId: string, goodbye: boolean, now: Date) =>
    deactivateRows({ sessionId, goodbye, now })

  /** After a restart: rows of sessions no live broker serves (not of this instance) go inactive. */
  const deactivateForeignRows = llmRows(
    Schema.Struct({ instanceId: Schema.String, now: At }),
    ({ instanceId, now }) =>
      sql`
      WITH s AS (
        UPDATE llm_relay.publisher_sessions SET stream_instance_id = NULL
        WHERE stream_instance_id IS DISTINCT FROM ${instanceId} AND stream_instance_id IS NOT NULL
      )
      UPDATE llm_relay.llms SET status = 'inactive', inactive_since = ${now}, updated_at = ${now},
        stream_open = false, down_since = COALESCE(down_since, ${now})
      WHERE kind = 'virtual' AND status = 'active'
        AND (provider_session_id IS NULL OR provider_session_id NOT IN
             (SELECT id FROM llm_relay.publisher_sessions WHERE instance_id = ${instanceId}))
      RETURNING *`
  )
  const deactivateForeign = (instanceId: string, now: Date) => deactivateForeignRows({ instanceId, now })

  /** Active virtual rows whose last heartbeat is older than the cutoff go inactive. */
  const deactivateStaleRows = llmRows(
    Schema.Struct({ heartbeatCutoff: At, now: At }),
    ({ heartbeatCutoff, now }) =>
      sql`
      UPDATE llm_relay.llms SET status = 'inactive', inactive_since = ${now}, updated_at = ${now},
        stream_open = false, down_since = COALESCE(down_since, ${now})
      WHERE kind = 'virtual' AND status = 'active' AND last_heartbeat_at < ${heartbeatCutoff}
      RETURNING *`
  )
  const deactivateStale = (heartbeatCutoff: Date, now: Date) => deactivateStaleRows({ heartbeatCutoff, now })

  const deleteExpiredInactive = llmRows(At, (inactiveCutoff) =>
    sql`
      DELETE FROM llm_relay.llms
      WHERE kind = 'virtual' AND status = 'inactive' AND inactive_since < ${inactiveCutoff}
      RETURNING *`)

  const idleSessionRows = SqlSchema.findAll({
    Request: At,
    Result: Schema.Struct({ id: Schema.String }),
    execute: (before) =>
      sql`
      DELETE FROM llm_relay.publisher_sessions s
      WHERE s.last_heartbeat_at < ${before} AND s.stream_instance_id IS NULL
        AND NOT EXISTS (SELECT 1 FROM llm_relay.llms l WHERE l.provider_session_id = s.id)
        AND NOT EXISTS (SELECT 1 FROM llm_relay.inference_tasks t
                        WHERE t.claimed_by = s.id AND t.status IN ('claimed', 'running'))
      RETURNING s.id`
  })
  const deleteIdleSessions = (before: Date) =>
    idleSessionRows(before).pipe(Effect.map((rows) => rows.map((row) => row.id)), Effect.orDie)

  const insertPublicRow = llmRow(
    Schema.Struct({ input: PublicLlmSpec, now: At }),
    ({ input, now }) =>
      sql`
      INSERT INTO llm_relay.llms (id, name, kind, type, model, url, api_key, pool, tier, description, status,
                        max_concurrent, created_at, updated_at)
      VALUES (${Crypto.randomUUID()}, ${input.name}, 'public', 'openai', ${input.model}, ${input.url},
              ${input.apiKey ?? null}, ${input.pool ?? input.name}, ${input.tier}, ${input.description},
              'active', 1024, ${now}, ${now})
      ON CONFLICT (name) DO NOTHING
      RETURNING *`
  )
  const insertPublic = (input: PublicLlmSpec, now: Date) => insertPublicRow({ input, now })

  const deleteByName = llmRows(
    Schema.String,
    (name) => sql`DELETE FROM llm_relay.llms WHERE name = ${name} RETURNING *`
  )

  const findSessionRow = SqlSchema.findOne({
    Request: Schema.String,
    Result: SessionRow,
    execute: (sessionId) =>
      sql`SELECT id, principal_id, instance_id, stream_instance_id, last_heartbeat_at FROM llm_relay.publisher_sessions WHERE id = ${sessionId}`
  })
  const findSession = (sessionId: string) => Effect.orDie(findSessionRow(sessionId))

  const sessionIdsOf = SqlSchema.findAll({
    Request: Schema.String,
    Result: Schema.Struct({ id: Schema.String }),
    execute: (principalId) => sql`SELECT id FROM llm_relay.publisher_sessions WHERE principal_id = ${principalId}`
  })
  const sessionsOf = (principalId: string) =>
    sessionIdsOf(principalId).pipe(Effect.map((rows) => rows.map((row) => row.id)), Effect.orDie)

  const lockSessionRow = SqlSchema.findOne({
    Request: Schema.String,
    Result: SessionRow,
    execute: (sessionId) =>
      sql`SELECT id, principal_id, instance_id, stream_instance_id, last_heartbeat_at FROM llm_relay.publisher_sessions WHERE id = ${sessionId} FOR UPDATE`
  })
  const lockSession = (sessionId: string) => Effect.orDie(lockSessionRow(sessionId))

  const upsertSessionRow = SqlSchema.findOne({
    Request: Schema.Struct({
      sessionId: Schema.String,
      principalId: Schema.String,
      instanceId: Schema.String,
      now: At
    }),
    Result: Schema.Struct({ id: Schema.String }),
    execute: ({ instanceId, now, principalId, sessionId }) =>
      sql`
      INSERT INTO llm_relay.publisher_sessions AS s (id, principal_id, instance_id, connected_at, last_heartbeat_at, created_at)
      VALUES (${sessionId}, ${principalId}, ${instanceId}, ${now}, ${now}, ${now})
      ON CONFLICT (id) DO UPDATE SET instance_id = EXCLUDED.instance_id, last_heartbeat_at = EXCLUDED.last_heartbeat_at
      WHERE s.principal_id = EXCLUDED.principal_id
      RETURNING id`
  })
  const upsertSession = (sessionId: string, principalId: string, instanceId: string, now: Date) =>
    upsertSessionRow({ sessionId, principalId, instanceId, now }).pipe(Effect.map(Option.isSome), Effect.orDie)

  return {
    all,
    findByName,
    page,
    findByNameOrPool,
    findBySession,
    lockByNames,
    insertVirtual,
    claimRow,
    lockPools,
    ensurePool,
    setShared,
    pools,
    pool,
    countOwnedExcept,
    deactivateUnlisted,
    heartbeat,
    reportHealth,
    activateSession,
    deactivateSession,
    deactivateForeign,
    deactivateStale,
    deleteExpiredInactive,
    deleteIdleSessions,
    insertPublic,
    deleteByName,
    findSession,
    sessionsOf,
    lockSession,
    upsertSession
  } as const
})

export class RegistryRepo extends Context.Tag("llm-relay/RegistryRepo")<RegistryRepo, RegistryRepoShape>() {
  static readonly layer = Layer.effect(this, make)
}
