/**
 * SQL of the API tokens (`llm_relay.api_tokens`). Only hashes are stored; the
 * service makes and hashes the secrets. Times are parameters taken from
 * `Clock` by the caller. Rows are decoded with `SqlSchema` (pg hands
 * `timestamptz` over as `Date`); a row that does not decode is a defect.
 */
import { SqlClient, SqlSchema } from "@effect/sql"
import { Context, Effect, Layer, Option, Schema } from "effect"
import { Role } from "../domain/Token.js"

/** A row of `llm_relay.api_tokens` without its hash (names camel-cased). */
export const TokenRow = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  principalId: Schema.String,
  createdAt: Schema.DateFromSelf,
  revokedAt: Schema.NullOr(Schema.DateFromSelf)
})
export type TokenRow = typeof TokenRow.Type

/** A token to store: its secret only as a hash. */
export const NewToken = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  principalId: Schema.String,
  tokenHash: Schema.String
})
export type NewToken = typeof NewToken.Type

export interface TokenRepoShape {
  readonly insert: (token: NewToken, at: Date) => Effect.Effect<void>
  /**
   * Stores the token under its id, or gives the stored one this hash again and
   * un-revokes it (its principal stays what it was).
   */
  readonly upsert: (token: NewToken, at: Date) => Effect.Effect<void>
  /** Every token, oldest first. */
  readonly all: Effect.Effect<ReadonlyArray<TokenRow>>
  /**
   * Revokes the token: the row as revoked now, or the row as it was when it
   * had been revoked before (its first revocation time kept); None when there
   * is no such token.
   */
  readonly revoke: (id: string, at: Date) => Effect.Effect<Option.Option<{ row: TokenRow; revokedNow: boolean }>>
  /** The unrevoked token with this hash. */
  readonly findActiveByHash: (hash: string) => Effect.Effect<Option.Option<TokenRow>>
  readonly countActiveAdmins: Effect.Effect<number>
  /** Whether any token, revoked or not, belongs to this principal. */
  readonly principalExists: (principalId: string) => Effect.Effect<boolean>
}

const At = Schema.DateFromSelf

export const make: Effect.Effect<TokenRepoShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const insertToken = SqlSchema.void({
    Request: Schema.Struct({ token: NewToken, at: At }),
    execute: ({ at, token }) =>
      sql`INSERT INTO llm_relay.api_tokens (id, name, role, principal_id, token_hash, created_at)
      VALUES (${token.id}, ${token.name}, ${token.role}, ${token.principalId}, ${token.tokenHash}, ${at})`
  })
  const insert = (token: NewToken, at: Date) => Effect.orDie(insertToken({ token, at }))

  const upsertToken = SqlSchema.void({
    Request: Schema.Struct({ token: NewToken, at: At }),
    execute: ({ at, token }) =>
      sql`INSERT INTO llm_relay.api_tokens (id, name, role, principal_id, token_hash, created_at)
      VALUES (${token.id}, ${token.name}, ${token.role}, ${token.principalId}, ${token.tokenHash}, ${at})
      ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash, revoked_at = NULL`
  })
  const upsert = (token: NewToken, at: Date) => Effect.orDie(upsertToken({ token, at }))

  const allTokens = SqlSchema.findAll({
    Request: Schema.Void,
    Result: TokenRow,
    execute: () =>
      sql`SELECT id, name, role, principal_id, created_at, revoked_at FROM llm_relay.api_tokens
      ORDER BY created_at, id`
  })
  const all = Effect.orDie(allTokens(undefined))

  const revokeToken = SqlSchema.findOne({
    Request: Schema.Struct({ id: Schema.String, at: At }),
    Result: Schema.Struct({ ...TokenRow.fields, revokedNow: Schema.Boolean }),
    // the row locked, then revoked unless it already was: `revoked_now` tells
    // a first revocation from a repeated one (whose time stays the first)
    execute: ({ at, id }) =>
      sql`
      WITH before AS (SELECT id, revoked_at FROM llm_relay.api_tokens WHERE id = ${id} FOR UPDATE)
      UPDATE llm_relay.api_tokens t SET revoked_at = COALESCE(t.revoked_at, ${at})
      FROM before WHERE t.id = before.id
      RETURNING t.id, t.name, t.role, t.principal_id, t.created_at, t.revoked_at,
                before.revoked_at IS NULL AS revoked_now`
  })
  const revoke = (id: string, at: Date) =>
    revokeToken({ id, at }).pipe(
      Effect.map(Option.map(({ revokedNow, ...row }) => ({ row, revokedNow }))),
      Effect.orDie
    )

  const findByHash = SqlSchema.findOne({
    Request: Schema.String,
    Result: TokenRow,
    execute: (hash) =>
      sql`SELECT id, name, role, principal_id, created_at, revoked_at FROM llm_relay.api_tokens
      WHERE token_hash = ${hash} AND revoked_at IS NULL`
  })
  const findActiveByHash = (hash: string) => Effect.orDie(findByHash(hash))

  const countAdmins = SqlSchema.single({
    Request: Schema.Void,
    Result: Schema.Struct({ n: Schema.Int }),
    execute: () => sql`SELECT count(*)::int AS n FROM llm_relay.api_tokens WHERE role = 'admin' AND revoked_at IS NULL`
  })
  const countActiveAdmins = countAdmins(undefined).pipe(Effect.map(({ n }) => n), Effect.orDie)

  const principalHasToken = SqlSchema.single({
    Request: Schema.String,
    Result: Schema.Struct({ found: Schema.Boolean }),
    execute: (principalId) =>
      sql`SELECT EXISTS (SELECT 1 FROM llm_relay.api_tokens WHERE principal_id = ${principalId}) AS found`
  })
  const principalExists = (principalId: string) =>
    principalHasToken(principalId).pipe(Effect.map(({ found }) => found), Effect.orDie)

  return { insert, upsert, all, revoke, findActiveByHash, countActiveAdmins, principalExists } as const
})

export class TokenRepo extends Context.Tag("llm-relay/TokenRepo")<TokenRepo, TokenRepoShape>() {
  static readonly layer = Layer.effect(this, make)
}
