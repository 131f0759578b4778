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
  createdAt: Schema.DateFromSelf,
  revokedAt: Schema.NullOr(Schema.DateFromSelf)
})
export type TokenRow = typeof TokenRow.Type

/** A token to store: its secret only as a hash. */
export const NewToken = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  tokenHash: Schema.String
})
export type NewToken = typeof NewToken.Type

export interface TokenRepoShape {
  readonly insert: (token: NewToken, at: Date) => Effect.Effect<void>
  /** Stores the token under its id, or gives the stored one this hash again and un-revokes it. */
  readonly upsert: (token: NewToken, at: Date) => Effect.Effect<void>
  /** Every token, oldest first. */
  readonly all: Effect.Effect<ReadonlyArray<TokenRow>>
  /** Revokes the token (keeping the first revocation time); None when there is no such token. */
  readonly revoke: (id: string, at: Date) => Effect.Effect<Option.Option<TokenRow>>
  /** The unrevoked token with this hash. */
  readonly findActiveByHash: (hash: string) => Effect.Effect<Option.Option<TokenRow>>
  readonly countActiveAdmins: Effect.Effect<number>
}

const At = Schema.DateFromSelf

export const make: Effect.Effect<TokenRepoShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const insertToken = SqlSchema.void({
    Request: Schema.Struct({ token: NewToken, at: At }),
    execute: ({ at, token }) =>
      sql`INSERT INTO llm_relay.api_tokens (id, name, role, token_hash, created_at)
      VALUES (${token.id}, ${token.name}, ${token.role}, ${token.tokenHash}, ${at})`
  })
  const insert = (token: NewToken, at: Date) => Effect.orDie(insertToken({ token, at }))

  const upsertToken = SqlSchema.void({
    Request: Schema.Struct({ token: NewToken, at: At }),
    execute: ({ at, token }) =>
      sql`INSERT INTO llm_relay.api_tokens (id, name, role, token_hash, created_at)
      VALUES (${token.id}, ${token.name}, ${token.role}, ${token.tokenHash}, ${at})
      ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash, revoked_at = NULL`
  })
  const upsert = (token: NewToken, at: Date) => Effect.orDie(upsertToken({ token, at }))

  const allTokens = SqlSchema.findAll({
    Request: Schema.Void,
    Result: TokenRow,
    execute: () => sql`SELECT id, name, role, created_at, revoked_at FROM llm_relay.api_tokens ORDER BY created_at, id`
  })
  const all = Effect.orDie(allTokens(undefined))

  const revokeToken = SqlSchema.findOne({
    Request: Schema.Struct({ id: Schema.String, at: At }),
    Result: TokenRow,
    execute: ({ at, id }) =>
      sql`
      UPDATE llm_relay.api_tokens SET revoked_at = COALESCE(revoked_at, ${at})
      WHERE id = ${id} RETURNING id, name, role, created_at, revoked_at`
  })
  const revoke = (id: string, at: Date) => Effect.orDie(revokeToken({ id, at }))

  const findByHash = SqlSchema.findOne({
    Request: Schema.String,
    Result: TokenRow,
    execute: (hash) =>
      sql`SELECT id, name, role, created_at, revoked_at FROM llm_relay.api_tokens
      WHERE token_hash = ${hash} AND revoked_at IS NULL`
  })
  const findActiveByHash = (hash: string) => Effect.orDie(findByHash(hash))

  const countAdmins = SqlSchema.single({
    Request: Schema.Void,
    Result: Schema.Struct({ n: Schema.Int }),
    execute: () => sql`SELECT count(*)::int AS n FROM llm_relay.api_tokens WHERE role = 'admin' AND revoked_at IS NULL`
  })
  const countActiveAdmins = countAdmins(undefined).pipe(Effect.map(({ n }) => n), Effect.orDie)

  return { insert, upsert, all, revoke, findActiveByHash, countActiveAdmins } as const
})

export class TokenRepo extends Context.Tag("llm-relay/TokenRepo")<TokenRepo, TokenRepoShape>() {
  static readonly layer = Layer.effect(this, make)
}
