/**
 * API tokens: random secrets (32 bytes), shown once, stored as SHA-256,
 * revocable. `RELAY_ADMIN_TOKEN` seeds an admin token; without it the first
 * start (no admin token stored yet) generates one and prints it once.
 */
import { SqlClient } from "@effect/sql"
import { Cache, Config, Context, Duration, Effect, Layer, Option, Redacted, Schema } from "effect"
import * as Crypto from "node:crypto"
import { now } from "../config.js"
import { NotFound } from "../domain/Errors.js"
import { CreatedToken, type Principal, Role, TokenInfo } from "../domain/Token.js"

export const hashToken = (token: string): string => Crypto.createHash("sha256").update(token).digest("hex")
export const generateSecret = (): string => `rly_${Crypto.randomBytes(32).toString("base64url")}`

const TokenRow = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  createdAt: Schema.DateFromSelf,
  revokedAt: Schema.NullOr(Schema.DateFromSelf)
})
const decodeRows = Schema.decodeUnknown(Schema.Array(TokenRow))

/** The id of the admin token seeded from `RELAY_ADMIN_TOKEN`. */
export const ENV_ADMIN_ID = "admin-env"

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const rows = <E, R>(q: Effect.Effect<ReadonlyArray<unknown>, E, R>) =>
    q.pipe(Effect.flatMap(decodeRows), Effect.orDie)

  const create = Effect.fn("Tokens.create")(function* (input: { readonly role: Role; readonly name: string }) {
    const token = generateSecret()
    const id = `tok_${Crypto.randomBytes(9).toString("base64url")}`
    yield* sql`INSERT INTO llm_relay.api_tokens (id, name, role, token_hash, created_at)
      VALUES (${id}, ${input.name}, ${input.role}, ${hashToken(token)}, ${yield* now})`.pipe(Effect.orDie)
    return new CreatedToken({ id, name: input.name, role: input.role, token })
  })

  const list = rows(sql`SELECT id, name, role, created_at, revoked_at FROM llm_relay.api_tokens ORDER BY created_at, id`).pipe(
    Effect.map((r) => r.map((row) => new TokenInfo(row)))
  )

  const revoke = Effect.fn("Tokens.revoke")(function* (id: string) {
    const updated = yield* rows(sql`
      UPDATE llm_relay.api_tokens SET revoked_at = COALESCE(revoked_at, ${yield* now})
      WHERE id = ${id} RETURNING id, name, role, created_at, revoked_at`)
    if (updated.length === 0) return yield* new NotFound({ message: `no token '${id}'` })
    yield* known.invalidateAll
  })

  const lookup = (hash: string): Effect.Effect<Option.Option<Principal>> =>
    rows(sql`SELECT id, name, role, created_at, revoked_at FROM llm_relay.api_tokens
      WHERE token_hash = ${hash} AND revoked_at IS NULL`).pipe(
      Effect.map((r) => Option.map(Option.fromNullable(r[0]), ({ id, name, role }) => ({ id, name, role })))
    )

  /**
   * Every request presents a token: known ones are remembered for a few
   * seconds (by hash), so the hot path does not read `api_tokens` each time.
   * Revoking on this broker forgets them at once; another broker instance
   * notices within the TTL.
   */
  const known = yield* Cache.make({ capacity: 10_000, timeToLive: Duration.seconds(5), lookup })

  /** The principal of a presented secret, or None (unknown or revoked). */
  const verify = (token: string): Effect.Effect<Option.Option<Principal>> => {
    const hash = hashToken(token)
    return Effect.tap(known.get(hash), (principal) => (Option.isNone(principal) ? known.invalidate(hash) : Effect.void))
  }

  /**
   * Make sure an admin can get in: the env token is (re)stored under a fixed
   * id; with no env token and no admin token at all, one is generated and
   * returned so the caller prints it once.
   */
  const ensureAdmin = Effect.fn("Tokens.ensureAdmin")(function* (fromEnv: Option.Option<Redacted.Redacted<string>>) {
    const at = yield* now
    if (Option.isSome(fromEnv)) {
      const secret = Redacted.value(fromEnv.value)
      yield* sql`INSERT INTO llm_relay.api_tokens (id, name, role, token_hash, created_at)
        VALUES (${ENV_ADMIN_ID}, 'RELAY_ADMIN_TOKEN', 'admin', ${hashToken(secret)}, ${at})
        ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash, revoked_at = NULL`.pipe(Effect.orDie)
      yield* known.invalidateAll
      return Option.none<CreatedToken>()
    }
    const admins = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM llm_relay.api_tokens
      WHERE role = 'admin' AND revoked_at IS NULL`.pipe(Effect.orDie)
    if (admins[0]!.n > 0) return Option.none<CreatedToken>()
    return Option.some(yield* create({ role: "admin", name: "generated-admin" }))
  })

  return { create, list, revoke, verify, ensureAdmin } as const
})

export class Tokens extends Context.Tag("llm-relay/Tokens")<Tokens, Effect.Effect.Success<typeof make>>() {
  static readonly layer = Layer.effect(this, make)
}

/** `RELAY_ADMIN_TOKEN`: a secret of 32 or more characters when set. */
export const AdminTokenConfig = Config.option(
  Config.redacted("RELAY_ADMIN_TOKEN").pipe(
    Config.validate({
      message: "RELAY_ADMIN_TOKEN must be at least 32 characters",
      validation: (r) => Redacted.value(r).length >= 32
    })
  )
)
