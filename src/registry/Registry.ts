/**
 * The LLM registry: publisher registration with the sticky rules of
 * PROTOCOL.md, heartbeats, session bind/unbind, and the registry half of the
 * sweep (heartbeat-stale rows inactive, long-inactive rows deleted).
 */
import { SqlClient } from "@effect/sql"
import { Context, Duration, Effect, Layer, Option, Schema } from "effect"
import * as Crypto from "node:crypto"
import { cutoff, InstanceId, now, RelayConfig } from "../config.js"
import { retryTransient } from "../db/Transient.js"
import { BadRequest, badRequestFromParseError, Forbidden, RateLimited } from "../domain/Errors.js"
import {
  type Llm,
  llmFromRow,
  LlmNotFound,
  type LlmRow,
  NameConflict,
  Pool,
  type ProviderSpec,
  type PublisherSession,
  RegisterRequest,
  Registration,
  SessionNotFound
} from "../domain/Llm.js"
import { ModelNotFound } from "../domain/Task.js"
import {
  type PoolRow,
  type PoolWithMembers,
  type ProviderHealth,
  type PublicLlmSpec,
  RegistryRepo,
  type SessionOwner
} from "./Repo.js"

const sorted = (names: ReadonlyArray<string>) => [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))

export interface SweepResult {
  /** Heartbeat-stale active rows flipped to inactive. */
  readonly markedInactive: number
  /** Inactive rows past retention, deleted. */
  readonly deleted: number
  /** Sessions that had a row go stale: their streams must close, their tasks revert. */
  readonly staleSessions: ReadonlyArray<string>
  /** Sessions silent past the inactive retention with nothing left (no row, stream or task), deleted. */
  readonly deletedSessions: ReadonlyArray<string>
}

export interface RegistryShape {
  /**
   * Register (or re-register) a session and its providers, all-or-nothing,
   * with the sticky rules of PROTOCOL.md.
   */
  readonly register: (
    principalId: string,
    input: unknown
  ) => Effect.Effect<Registration, BadRequest | Forbidden | NameConflict | RateLimited>
  /** Bumps every row of the session and revives inactive ones. */
  readonly heartbeat: (sessionId: string) => Effect.Effect<ReadonlyArray<Llm>, SessionNotFound>
  /**
   * Stores the health a heartbeat reported for the session's providers
   * (unknown names ignored, absent ones unchanged); the rows whose health changed.
   */
  readonly reportHealth: (
    sessionId: string,
    reports: ReadonlyArray<ProviderHealth>
  ) => Effect.Effect<ReadonlyArray<Llm>>
  /** The session's stream opened: its rows are online. */
  readonly bindSession: (sessionId: string) => Effect.Effect<ReadonlyArray<Llm>>
  /**
   * The session's stream closed (or it said goodbye, or went silent): rows
   * inactive at once. Without a goodbye its pools are reconnecting for the grace.
   */
  readonly unbindSession: (sessionId: string, goodbye: boolean) => Effect.Effect<ReadonlyArray<Llm>>
  /** At start: rows of sessions that only a dead broker process served are offline until they reconnect. */
  readonly recoverAfterRestart: () => Effect.Effect<ReadonlyArray<Llm>>
  readonly gcSweep: Effect.Effect<SweepResult>
  readonly list: Effect.Effect<ReadonlyArray<Llm>>
  /**
   * A page of rows by name as `viewer` may see them (`providerSessionId`
   * only for an admin and the row's owner); the cursor of the next page.
   */
  readonly page: (
    viewer: { readonly id: string; readonly role: string },
    request: { readonly limit: number; readonly cursor: string | undefined }
  ) => Effect.Effect<{ readonly data: ReadonlyArray<Llm>; readonly nextCursor: string | null }, BadRequest>
  readonly findByName: (name: string) => Effect.Effect<Option.Option<Llm>>
  /** The rows a `model` names, as stored: the row of that name, or every member of that pool. */
  readonly resolve: (name: string) => Effect.Effect<ReadonlyArray<LlmRow>>
  readonly llmsOfSession: (sessionId: string) => Effect.Effect<ReadonlyArray<Llm>>
  readonly findSession: (sessionId: string) => Effect.Effect<Option.Option<PublisherSession>>
  /** The ids of a principal's sessions. */
  readonly sessionsOf: (principalId: string) => Effect.Effect<ReadonlyArray<string>>
  readonly getSession: (sessionId: string) => Effect.Effect<PublisherSession, SessionNotFound>
  /** An admin adds a public LLM (a fixed upstream URL the broker calls itself). */
  readonly createPublic: (input: PublicLlmSpec) => Effect.Effect<Llm, NameConflict>
  readonly deleteByName: (name: string) => Effect.Effect<void, LlmNotFound>
  /** The row as stored, with a public LLM's url and key (never sent to clients). */
  readonly findRow: (name: string) => Effect.Effect<Option.Option<LlmRow>>
  /** Every pool with its owner, members and whether it is shared. */
  readonly pools: Effect.Effect<ReadonlyArray<Pool>>
  /** An admin opens a pool to other principals' publishers, or closes it again. */
  readonly sharePool: (name: string, shared: boolean) => Effect.Effect<Pool, ModelNotFound>
}

const decodeRegister = Schema.decodeUnknown(RegisterRequest, { errors: "all", onExcessProperty: "ignore" })

type Requires = SqlClient.SqlClient | RegistryRepo | RelayConfig | InstanceId

export const make: Effect.Effect<RegistryShape, never, Requires> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const repo = yield* RegistryRepo
  const config = yield* RelayConfig
  const instanceId = yield* InstanceId
  const toLlms = (rows: ReadonlyArray<LlmRow>) => rows.map(llmFromRow)

  /**
   * Why a principal's session may not register `spec`, if it may not
   * (PROTOCOL.md, registration rules). `rows` and `pools` hold the rows and
   * pools named like any of the request's names and pools. A pool with no
   * owner is the admins' (public LLMs, or rows older than ownership).
   */
  const conflictOf = (
    spec: ProviderSpec,
    owner: SessionOwner,
    rows: ReadonlyMap<string, LlmRow>,
    pools: ReadonlyMap<string, PoolRow>
  ): Option.Option<NameConflict> => {
    const name = spec.name
    const pool = spec.pool ?? name
    const conflict = (subject: string, message: string) => Option.some(new NameConflict({ name: subject, message }))
    const theirs = (ownerId: string | null) => ownerId !== owner.principalId
    const row = rows.get(name)
    if (row !== undefined) {
      if (row.kind === "public") return conflict(name, `'${name}' is a public LLM; a publisher cannot publish over it`)
      if (row.ownerId !== null && theirs(row.ownerId)) {
        return conflict(name, `'${name}' is an LLM of another principal`)
      }
      if (row.status === "active" && row.providerSessionId !== owner.sessionId) {
        return conflict(name, `'${name}' is already active under a different session`)
      }
    }
    // a row named like a pool would take that pool's calls: only the pool's own members may, in a shared pool
    const poolOfName = pools.get(name)
    if (poolOfName !== undefined && theirs(poolOfName.ownerId) && !(pool === name && poolOfName.shared)) {
      return conflict(name, `'${name}' is a pool of another principal`)
    }
    if (pool !== name) {
      const joined = pools.get(pool)
      if (joined !== undefined && theirs(joined.ownerId) && !joined.shared) {
        return conflict(pool, `the pool '${pool}' belongs to another principal (an admin can share it)`)
      }
      const rowOfPool = rows.get(pool)
      if (rowOfPool !== undefined && theirs(rowOfPool.ownerId) && joined?.shared !== true) {
        return conflict(pool, `'${pool}' is an LLM of another principal; it cannot be used as a pool`)
      }
    }
    return Option.none()
  }

  /**
   * Register (or re-register) a session and its providers, all-or-nothing:
   * every check runs before the first write, and all writes share one
   * transaction, so a conflict on the last provider leaves nothing behind.
   */
  const register = Effect.fn("Registry.register")(function*(principalId: string, input: unknown) {
    const request = yield* Effect.mapError(decodeRegister(input), badRequestFromParseError)
    const names = request.providers.map((p) => p.name)
    const duplicate = names.find((name, i) => names.indexOf(name) !== i)
    if (duplicate !== undefined) {
      return yield* new BadRequest({ message: `providers: the name '${duplicate}' is listed twice` })
    }
    const sessionId = request.sessionId ?? Crypto.randomUUID()
    const at = yield* now
    const rows = yield* retryTransient(sql.withTransaction(
      Effect.gen(function*() {
        const existingSession = yield* repo.lockSession(sessionId)
        if (Option.isSome(existingSession) && existingSession.value.principalId !== principalId) {
          return yield* new Forbidden({ message: `session '${sessionId}' belongs to another principal` })
        }
        const owner: SessionOwner = { sessionId, principalId }
        const poolNames = request.providers.map((p) => p.pool ?? p.name)
        // Locked in one order (rows, then pools, each by name) so registrations cannot deadlock
        const touched = sorted([...new Set([...names, ...poolNames])])
        const existing = new Map((yield* repo.lockByNames(touched)).map((row) => [row.name, row] as const))
        const pools = new Map((yield* repo.lockPools(touched)).map((pool) => [pool.name, pool] as const))
        for (const spec of request.providers) {
          const conflict = conflictOf(spec, owner, existing, pools)
          if (Option.isSome(conflict)) return yield* conflict.value
        }
        const others = yield* repo.countOwnedExcept(principalId, names)
        if (others + names.length > config.limitLlms) {
          return yield* new RateLimited({
            message:
              `limit reached: a principal's publishers may hold ${config.limitLlms} LLM rows (RELAY_LIMIT_LLMS); it has ${others} besides these ${names.length}`,
            retryAfter: 60
          })
        }
        yield* repo.upsertSession(sessionId, principalId, instanceId, at)
        // a new pool is the registering principal's; one another registration made meanwhile is checked again
        for (const poolName of sorted([...new Set(poolNames)])) {
          if (pools.has(poolName)) continue
          const pool = yield* repo.ensurePool(poolName, principalId, at)
          if (pool.ownerId !== principalId && !pool.shared) {
            return yield* new NameConflict({
              name: poolName,
              message: `the pool '${poolName}' belongs to another principal (an admin can share it)`
            })
          }
        }
        // rows registered while the session streams are online at once; otherwise reconnecting until it opens
        const streamOpen = Option.isSome(existingSession) && existingSession.value.streamInstanceId !== null
        // Sorted so that two registrations touching the same new names take
        // the unique-index locks in one order and cannot deadlock.
        const byName = new Map<string, LlmRow>()
        for (const spec of [...request.providers].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
          const current = existing.get(spec.name)
          if (current !== undefined) {
            byName.set(spec.name, yield* repo.claimRow(current.id, spec, owner, streamOpen, at))
            continue
          }
          const inserted = yield* repo.insertVirtual(spec, owner, streamOpen, at)
          if (Option.isNone(inserted)) {
            // Another registration inserted this name after our lock read.
            return yield* new NameConflict({
              name: spec.name,
              message: `'${spec.name}' is already active under a different session`
            })
          }
          byName.set(spec.name, inserted.value)
        }
        yield* repo.deactivateUnlisted(sessionId, names, at)
        return names.map((name) => byName.get(name)!)
      })
    )).pipe(Effect.catchTag("SqlError", Effect.die))
    return new Registration({
      sessionId,
      heartbeatIntervalMs: Duration.toMillis(config.heartbeatInterval),
      heartbeatTimeoutMs: Duration.toMillis(config.heartbeatTimeout),
      llms: toLlms(rows)
    })
  })

  const findSession = (sessionId: string) => repo.findSession(sessionId)

  const getSession = Effect.fn("Registry.getSession")(function*(sessionId: string) {
    const session = yield* repo.findSession(sessionId)
    if (Option.isNone(session)) {
      return yield* new SessionNotFound({ message: `no publisher session '${sessionId}'` })
    }
    return session.value
  })

  /** Bumps every row of the session and revives inactive ones. */
  const heartbeat = Effect.fn("Registry.heartbeat")(function*(sessionId: string) {
    yield* getSession(sessionId)
    return toLlms(yield* repo.heartbeat(sessionId, yield* now))
  })

  /** A reason is the publisher's text: kept short, like every quoted value. */
  const reportHealth = Effect.fn("Registry.reportHealth")(
    function*(sessionId: string, reports: ReadonlyArray<ProviderHealth>) {
      const kept = reports.map((r) => ({ ...r, reason: r.healthy ? null : (r.reason ?? "unhealthy").slice(0, 500) }))
      return toLlms(yield* repo.reportHealth(sessionId, kept, yield* now))
    }
  )

  /**
   * A statement that writes the session row and its `llms` rows, in the one
   * lock order every transaction here keeps: the session row first, then its
   * rows (register does the same). A single statement writing both tables
   * takes them in whatever order its plan does, and deadlocked against a
   * re-registration of the same session (found by the chaos suite).
   */
  const sessionFirst = <A>(sessionId: string, write: Effect.Effect<A>) =>
    retryTransient(sql.withTransaction(Effect.zipRight(repo.lockSession(sessionId), write))).pipe(
      Effect.catchTag("SqlError", Effect.die)
    )

  /** The session's stream opened: its rows are online. */
  const bindSession = Effect.fn("Registry.bindSession")(function*(sessionId: string) {
    const at = yield* now
    return toLlms(yield* sessionFirst(sessionId, repo.activateSession(sessionId, instanceId, at)))
  })

  /** The session's stream closed (or it said goodbye, or went silent): rows inactive at once. */
  const unbindSession = Effect.fn("Registry.unbindSession")(function*(sessionId: string, goodbye: boolean) {
    const at = yield* now
    return toLlms(yield* sessionFirst(sessionId, repo.deactivateSession(sessionId, goodbye, at)))
  })

  /** At start: rows of sessions that only a dead broker process served are offline until they reconnect. */
  const recoverAfterRestart = Effect.fn("Registry.recoverAfterRestart")(function*() {
    return toLlms(yield* repo.deactivateForeign(instanceId, yield* now))
  })

  const gcSweep: Effect.Effect<SweepResult> = Effect.gen(function*() {
    const at = yield* Effect.clockWith((c) => c.currentTimeMillis)
    const stale = yield* retryTransient(repo.deactivateStale(cutoff(at, config.heartbeatTimeout), new Date(at)))
    const deleted = yield* repo.deleteExpiredInactive(cutoff(at, config.inactiveRetention))
    const deletedSessions = yield* repo.deleteIdleSessions(cutoff(at, config.inactiveRetention))
    const staleSessions = [...new Set(stale.flatMap((row) => (row.providerSessionId ? [row.providerSessionId] : [])))]
    return { markedInactive: stale.length, deleted: deleted.length, staleSessions, deletedSessions }
  }).pipe(Effect.withSpan("Registry.gcSweep"))

  /** An admin adds a public LLM (a fixed upstream URL the broker calls itself). */
  /**
   * A public LLM named like a principal's pool would take that pool's calls:
   * 409. Its pool, if new, is the admins'.
   */
  const createPublic = Effect.fn("Registry.createPublic")(function*(input: PublicLlmSpec) {
    const at = yield* now
    const pool = input.pool ?? input.name
    const inserted = yield* retryTransient(sql.withTransaction(Effect.gen(function*() {
      const pools = yield* repo.lockPools(sorted([...new Set([input.name, pool])]))
      const named = pools.find((p) => p.name === input.name)
      if (named !== undefined && named.ownerId !== null && input.name !== pool) {
        return yield* new NameConflict({ name: input.name, message: `'${input.name}' is the name of a pool` })
      }
      const row = yield* repo.insertPublic(input, at)
      if (Option.isNone(row)) {
        return yield* new NameConflict({ name: input.name, message: `an LLM named '${input.name}' already exists` })
      }
      yield* repo.ensurePool(pool, null, at)
      return row.value
    }))).pipe(Effect.catchTag("SqlError", Effect.die))
    return llmFromRow(inserted)
  })

  const poolView = (pool: PoolWithMembers) =>
    new Pool({
      name: pool.name,
      principalId: pool.ownerId,
      shared: pool.shared,
      members: pool.members,
      createdAt: pool.createdAt,
      updatedAt: pool.updatedAt
    })

  const pools = Effect.map(repo.pools, (rows) => rows.map(poolView))

  const sharePool = Effect.fn("Registry.sharePool")(function*(name: string, shared: boolean) {
    const updated = yield* repo.setShared(name, shared, yield* now)
    if (Option.isNone(updated)) return yield* new ModelNotFound({ message: `no pool '${name.slice(0, 200)}'` })
    const found = yield* repo.pool(name)
    return poolView(Option.getOrElse(found, () => ({ ...updated.value, members: [] })))
  })

  const deleteByName = Effect.fn("Registry.deleteByName")(function*(name: string) {
    const deleted = yield* repo.deleteByName(name)
    if (deleted.length === 0) return yield* new LlmNotFound({ message: `no LLM named '${name}'` })
  })

  /** The row as stored, with a public LLM's url and key (never sent to clients). */
  const findRow = (name: string) => repo.findByName(name)

  const list: Effect.Effect<ReadonlyArray<Llm>> = Effect.map(repo.all, toLlms)

  const page = Effect.fn("Registry.page")(function*(
    viewer: { readonly id: string; readonly role: string },
    request: { readonly limit: number; readonly cursor: string | undefined }
  ) {
    let after: string | null = null
    if (request.cursor !== undefined && request.cursor !== "") {
      after = Buffer.from(request.cursor, "base64url").toString("utf8")
      if (!/^[A-Za-z0-9._:/-]{1,128}$/.test(after)) {
        return yield* new BadRequest({ message: "cursor is not one this API returned" })
      }
    }
    const rows = yield* repo.page(after, request.limit + 1)
    const shown = rows.slice(0, request.limit)
    // which session serves a row is its owner's business (and an admin's), not another principal's
    const data = shown.map((row) =>
      viewer.role === "admin" || (row.ownerId !== null && row.ownerId === viewer.id)
        ? llmFromRow(row)
        : llmFromRow({ ...row, providerSessionId: null })
    )
    const nextCursor = rows.length > request.limit
      ? Buffer.from(shown[shown.length - 1]!.name).toString("base64url")
      : null
    return { data, nextCursor }
  })
  const findByName = (name: string) => Effect.map(repo.findByName(name), Option.map(llmFromRow))
  /** The rows a `model` names: the row of that name, or every member of that pool. */
  const resolve = (name: string) => repo.findByNameOrPool(name)
  const llmsOfSession = (sessionId: string) => Effect.map(repo.findBySession(sessionId), toLlms)

  return {
    register,
    heartbeat,
    reportHealth,
    bindSession,
    unbindSession,
    recoverAfterRestart,
    gcSweep,
    list,
    page,
    findByName,
    resolve,
    llmsOfSession,
    findSession,
    sessionsOf: (principalId: string) => repo.sessionsOf(principalId),
    getSession,
    createPublic,
    deleteByName,
    findRow,
    pools,
    sharePool
  } as const
})

export class Registry extends Context.Tag("llm-relay/Registry")<Registry, RegistryShape>() {
  /** Needs a `SqlClient`, `RelayConfig` and `InstanceId`. */
  static readonly layer = Layer.effect(this, make).pipe(Layer.provide(RegistryRepo.layer))
}

export type { ProviderHealth, PublisherSession }
