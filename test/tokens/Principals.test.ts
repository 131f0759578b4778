/**
 * Tokens belong to principals (PROTOCOL v1.1): a request acts as its token's
 * principal, which owns what any of its tokens made, so a token can be
 * replaced (issue the new, revoke the old) without its owner losing anything.
 */
import { assert, layer } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import * as Broker from "../../src/Broker.js"
import { ENV_ADMIN_ID, Tokens } from "../../src/tokens/Tokens.js"
import { ConfigTest } from "../support/layers.js"
import * as TestDatabase from "../support/TestDatabase.js"

const Services = Broker.services.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))

const principalOf = (secret: string) =>
  Effect.flatMap(Tokens, (tokens) => Effect.map(tokens.verify(secret), Option.getOrThrow))

layer(Services)("Tokens and principals", (it) => {
  it.effect("a token made without principalId starts a new principal; one made with it acts as that principal", () =>
    Effect.gen(function*() {
      const tokens = yield* Tokens
      const first = yield* tokens.create({ role: "publisher", name: "gpu-box" })
      assert.match(first.principalId, /^prn_[A-Za-z0-9_-]+$/)
      assert.notStrictEqual(first.principalId, first.id)
      const other = yield* tokens.create({ role: "publisher", name: "gpu-box" })
      assert.notStrictEqual(other.principalId, first.principalId, "each token without principalId is a new principal")

      const second = yield* tokens.create({ role: "client", name: "gpu-box-2", principalId: first.principalId })
      assert.strictEqual(second.principalId, first.principalId)
      assert.notStrictEqual(second.id, first.id)
      assert.deepStrictEqual(yield* principalOf(second.token), {
        id: first.principalId,
        tokenId: second.id,
        name: "gpu-box-2",
        role: "client" // a token's role is its own, whatever the principal's other tokens have
      })
      assert.deepStrictEqual(yield* principalOf(first.token), {
        id: first.principalId,
        tokenId: first.id,
        name: "gpu-box",
        role: "publisher"
      })
    }))

  it.effect("principalId must be one an existing token has, revoked or not; else BadRequest naming principalId", () =>
    Effect.gen(function*() {
      const tokens = yield* Tokens
      const unknown = yield* Effect.flip(tokens.create({ role: "client", name: "x", principalId: "prn_nobody" }))
      assert.strictEqual(unknown._tag, "BadRequest")
      assert.match(unknown.message, /^principalId: .*'prn_nobody'/)

      const malformed = yield* Effect.flip(tokens.create({ role: "client", name: "x", principalId: "a b" }))
      assert.match(malformed.message, /^principalId: must be 1-128 characters/)
      const long = yield* Effect.flip(tokens.create({ role: "client", name: "x", principalId: "p".repeat(5000) }))
      assert.match(long.message, /^principalId: /)
      assert.isBelow(long.message.length, 400, "the message quotes at most 200 characters of the value")

      const old = yield* tokens.create({ role: "publisher", name: "old" })
      yield* tokens.revoke(old.id)
      const next = yield* tokens.create({ role: "publisher", name: "new", principalId: old.principalId })
      assert.strictEqual((yield* principalOf(next.token)).id, old.principalId)
    }))

  it.effect("list shows each token's principal; revoke answers the token with its principal, once", () =>
    Effect.gen(function*() {
      const tokens = yield* Tokens
      const first = yield* tokens.create({ role: "publisher", name: "listed" })
      const second = yield* tokens.create({ role: "admin", name: "listed-2", principalId: first.principalId })
      // both made at the same (test) instant: the listing orders them by id then, so compare as sets
      const byId = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) => (a[0]! < b[0]! ? -1 : 1)
      const listed = (yield* tokens.list).filter((t) => t.principalId === first.principalId)
      assert.deepStrictEqual(
        listed.map((t) => [t.id, t.role]).sort(byId),
        [[first.id, "publisher"], [second.id, "admin"]].sort(byId)
      )

      const revoked = yield* tokens.revoke(first.id)
      assert.strictEqual(revoked.revokedNow, true)
      assert.strictEqual(revoked.token.principalId, first.principalId)
      assert.isNotNull(revoked.token.revokedAt)
      assert.isTrue(Option.isNone(yield* tokens.verify(first.token)))
      assert.strictEqual((yield* principalOf(second.token)).id, first.principalId, "the other token still works")

      const again = yield* tokens.revoke(first.id)
      assert.strictEqual(again.revokedNow, false)
      assert.deepStrictEqual(again.token.revokedAt, revoked.token.revokedAt)
      const missing = yield* Effect.flip(tokens.revoke("tok_nope"))
      assert.strictEqual(missing._tag, "NotFound")
    }))

  it.effect("the env admin token is its own principal, admin-env, and stays it when set again", () =>
    Effect.gen(function*() {
      const tokens = yield* Tokens
      const secret = "e".repeat(40)
      yield* tokens.ensureAdmin(Option.some(Redacted.make(secret)))
      assert.deepStrictEqual(yield* principalOf(secret), {
        id: ENV_ADMIN_ID,
        tokenId: ENV_ADMIN_ID,
        name: "RELAY_ADMIN_TOKEN",
        role: "admin"
      })
      const rotated = yield* tokens.create({ role: "admin", name: "ops", principalId: ENV_ADMIN_ID })
      yield* tokens.ensureAdmin(Option.some(Redacted.make("f".repeat(40))))
      assert.strictEqual((yield* principalOf("f".repeat(40))).id, ENV_ADMIN_ID)
      assert.strictEqual((yield* principalOf(rotated.token)).id, ENV_ADMIN_ID)
    }))
})
