/**
 * API tokens: random secrets (32 bytes), shown once, stored as SHA-256,
 * revocable. `RELAY_ADMIN_TOKEN` seeds an admin token; without it the first
 * start (no admin token stored yet) generates one and prints it once.
 */
import { Cache, Config, Context, Duration, Effect, Layer, Option, Redacted } from "effect"
import * as Crypto from "node:crypto"
import { now } from "../config.js"
import { NotFound } from "../domain/Errors.js"
import { CreatedToken, type Principal, type Role, TokenInfo } from "../domain/Token.js"
import { TokenRepo } from "./Repo.js"

export const hashToken = (token: string): string => Crypto.createHash("sha256").update(token).digest("hex")
export const generateSecret = (): string => `rly_${Crypto.randomBytes(32).toString("base64url")}`

/** The id of the admin token seeded from `RELAY_ADMIN_TOKEN`. */
export const ENV_ADMIN_ID = "admin-env"

export interface TokensShape {
  /** A new token: the only time its secret is shown. */
  readonly create: (input: { readonly role: Role; readonly name: string }) => Effect.Effect<CreatedToken>
  readonly list: Effect.Effect<ReadonlyArray<TokenInfo>>
  readonly revoke: (id: string) => Effect.Effect<void, NotFound>
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

  const create = Effect.fn("Tokens.create")(function*(input: { readonly role: Role; readonly name: string }) {
    const token = generateSecret()
    const id = `tok_${Crypto.randomBytes(9).toString("base64url")}`
    yield* repo.insert({ id, name: input.name, role: input.role, tokenHash: hashToken(token) }, yield* now)
    return new CreatedToken({ id, name: input.name, role: input.role, token })
  })

  const list = Effect.map(repo.all, (rows) => rows.map((row) => new TokenInfo(row)))

  const revoke = Effect.fn("Tokens.revoke")(function*(id: string) {
    const updated = yield* repo.revoke(id, yield* now)
    if (Option.isNone(updated)) return yield* new NotFound({ message: `no token '${id}'` })
    yield* known.invalidateAll
  })

  const lookup = (hash: string): Effect.Effect<Option.Option<Principal>> =>
    repo.findActiveByHash(hash).pipe(Effect.map(Option.map(({ id, name, role }) => ({ id, name, role }))))

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
        { id: ENV_ADMIN_ID, name: "RELAY_ADMIN_TOKEN", role: "admin", tokenHash: hashToken(secret) },
        at
      )
      yield* known.invalidateAll
      return Option.none<CreatedToken>()
    }
    if ((yield* repo.countActiveAdmins) > 0) return Option.none<CreatedToken>()
    return Option.some(yield* create({ role: "admin", name: "generated-admin" }))
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
