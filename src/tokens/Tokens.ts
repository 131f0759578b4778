/**
 * API tokens: random secrets (32 bytes), shown once, stored as SHA-256,
 * revocable. Each belongs to a principal, which owns what its tokens make:
 * a token made without `principalId` starts a new principal, one made with it
 * is another token of that principal (rotation: issue the new, revoke the
 * old). `RELAY_ADMIN_TOKEN` seeds an admin token (principal `admin-env`);
 * without it the first start (no admin token stored yet) generates one and
 * prints it once.
 */
import { Cache, Config, Context, Duration, Effect, Layer, Option, Redacted, Schema } from "effect"
import * as Crypto from "node:crypto"
import { now } from "../config.js"
import { BadRequest, describeParseError, NotFound } from "../domain/Errors.js"
import { CreatedToken, type Principal, PrincipalId, type Role, TokenInfo } from "../domain/Token.js"
import { TokenRepo } from "./Repo.js"

export const hashToken = (token: string): string => Crypto.createHash("sha256").update(token).digest("hex")
export const generateSecret = (): string => `rly_${Crypto.randomBytes(32).toString("base64url")}`

/** The id of the admin token seeded from `RELAY_ADMIN_TOKEN`, and of its principal. */
export const ENV_ADMIN_ID = "admin-env"

/** A value quoted in a message: at most 200 characters of it. */
const quote = (value: string) => `'${value.length > 200 ? `${value.slice(0, 200)}…` : value}'`

export interface NewTokenInput {
  readonly role: Role
  readonly name: string
  /** Another token for this principal (one an existing token, revoked or not, has); absent: a new principal. */
  readonly principalId?: string | undefined
}

/** A revocation: the token as it is now, and whether this call revoked it (false: it already was). */
export interface Revoked {
  readonly token: TokenInfo
  readonly revokedNow: boolean
}

export interface TokensShape {
  /**
   * A new token: the only time its secret is shown. A `principalId` no token
   * has, or not an id at all, is BadRequest naming `principalId`.
   */
  readonly create: (input: NewTokenInput) => Effect.Effect<CreatedToken, BadRequest>
  readonly list: Effect.Effect<ReadonlyArray<TokenInfo>>
  /** Revokes the token (again: a no-op, `revokedNow` false); NotFound for an unknown id. */
  readonly revoke: (id: string) => Effect.Effect<Revoked, NotFound>
  /** The principal of a presented secret, or None (unknown or revoked). */
  readonly verify: (token: string) => Effect.Effect<Option.Option<Principal>>
  /**
   * Make sure an admin can get in; returns a generated admin token when one
   * had to be made (to print once).
   */
  readonly ensureAdmin: (
    fromEnv: Option.Option<Redacted.Redacted<string>>
  ) => Effect.Effect<Option.Option<CreatedToken>>
}

export const make: Effect.Effect<TokensShape, never, TokenRepo> = Effect.gen(function*() {
  const repo = yield* TokenRepo

  /**
   * The principal a new token joins: a new one, or an existing one checked.
   * Tokens are never deleted, so a principal that had a token has it still.
   */
  const principalFor = (principalId: string | undefined) =>
    Effect.gen(function*() {
      if (principalId === undefined) return `prn_${Crypto.randomBytes(9).toString("base64url")}`
      const valid = yield* Schema.decodeUnknown(PrincipalId)(principalId).pipe(
        Effect.mapError((error) => new BadRequest({ message: `principalId: ${describeParseError(error)}` }))
      )
      if (!(yield* repo.principalExists(valid))) {
        return yield* new BadRequest({
          message: `principalId: no token belongs to principal ${
            quote(valid)
          } (leave principalId out to make a new principal)`
        })
      }
      return valid
    })

  const create = Effect.fn("Tokens.create")(function*(input: NewTokenInput) {
    const principalId = yield* principalFor(input.principalId)
    const token = generateSecret()
    const id = `tok_${Crypto.randomBytes(9).toString("base64url")}`
    yield* repo.insert({ id, name: input.name, role: input.role, principalId, tokenHash: hashToken(token) }, yield* now)
    return new CreatedToken({ id, name: input.name, role: input.role, principalId, token })
  })

  const list = Effect.map(repo.all, (rows) => rows.map((row) => new TokenInfo(row)))

  const revoke = Effect.fn("Tokens.revoke")(function*(id: string) {
    const revoked = yield* repo.revoke(id, yield* now)
    if (Option.isNone(revoked)) return yield* new NotFound({ message: `no token ${quote(id)}` })
    yield* known.invalidateAll
    return { token: new TokenInfo(revoked.value.row), revokedNow: revoked.value.revokedNow }
  })

  const lookup = (hash: string): Effect.Effect<Option.Option<Principal>> =>
    repo.findActiveByHash(hash).pipe(
      Effect.map(Option.map(({ id, name, principalId, role }) => ({ id: principalId, tokenId: id, name, role })))
    )

  /**
   * Every request presents a token: known ones are remembered for a few
   * seconds (by hash), so the hot path does not read `api_tokens` each time.
   * Revoking on this broker forgets them at once; another broker instance
   * notices within the TTL.
   */
  const known = yield* Cache.make({ capacity: 10_000, timeToLive: Duration.seconds(5), lookup })

  /**
   * The principal of a presented secret, or None (unknown or revoked). The
   * lookup is shared by every request presenting the token meanwhile, and a
   * Cache lookup interrupted hands its interruption to all of them: it runs
   * to its end (one indexed read) even if the request that started it goes.
   */
  const verify = (token: string): Effect.Effect<Option.Option<Principal>> => {
    const hash = hashToken(token)
    return Effect.tap(
      Effect.uninterruptible(known.get(hash)),
      (principal) => (Option.isNone(principal) ? known.invalidate(hash) : Effect.void)
    )
  }

  /**
   * Make sure an admin can get in: the env token is (re)stored under a fixed
   * id; with no env token and no admin token at all, one is generated and
   * returned so the caller prints it once.
   */
  const ensureAdmin = Effect.fn("Tokens.ensureAdmin")(function*(fromEnv: Option.Option<Redacted.Redacted<string>>) {
    const at = yield* now
    if (Option.isSome(fromEnv)) {
      const secret = Redacted.value(fromEnv.value)
      yield* repo.upsert(
        {
          id: ENV_ADMIN_ID,
          name: "RELAY_ADMIN_TOKEN",
          role: "admin",
          principalId: ENV_ADMIN_ID,
          tokenHash: hashToken(secret)
        },
        at
      )
      yield* known.invalidateAll
      return Option.none<CreatedToken>()
    }
    if ((yield* repo.countActiveAdmins) > 0) return Option.none<CreatedToken>()
    // a new principal: nothing to check, nothing to refuse
    return Option.some(yield* Effect.orDie(create({ role: "admin", name: "generated-admin" })))
  })

  return { create, list, revoke, verify, ensureAdmin } as const
})

export class Tokens extends Context.Tag("llm-relay/Tokens")<Tokens, TokensShape>() {
  /** Needs a `SqlClient`. */
  static readonly layer = Layer.effect(this, make).pipe(Layer.provide(TokenRepo.layer))
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
