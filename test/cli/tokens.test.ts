/**
 * `bin/llm-relay tokens create|list|revoke` as processes, on a database of
 * their own: what `/v1/tokens` does, principals and all.
 */
import { type Context, Effect, Exit, Option, Redacted, Scope } from "effect"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { layerUrl } from "../../src/db/Database.js"
import type { Principal } from "../../src/domain/Token.js"
import { Tokens } from "../../src/tokens/Tokens.js"
import { spawnRelay } from "../support/process.js"
import { createDatabase } from "../support/TestDatabase.js"

const scope = Effect.runSync(Scope.make())
let databaseUrl: string
beforeAll(async () => {
  databaseUrl = (await Effect.runPromise(Scope.extend(createDatabase, scope))).url
})
afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

const run = async (args: ReadonlyArray<string>) => {
  const spawned = spawnRelay(["tokens", ...args], { DATABASE_URL: databaseUrl })
  const code = await spawned.exited
  return { code, output: spawned.output }
}

/** The Tokens service of a broker on that database. */
const withTokens = <A>(f: (tokens: Context.Tag.Service<Tokens>) => Effect.Effect<A>): Promise<A> =>
  Effect.runPromise(
    Effect.flatMap(Tokens, f).pipe(Effect.provide(Tokens.layer), Effect.provide(layerUrl(Redacted.make(databaseUrl))))
  )

/** What a broker on that database makes of a secret. */
const verify = (secret: string): Promise<Option.Option<Principal>> => withTokens((tokens) => tokens.verify(secret))

/** Each spawn starts node and migrates: seconds on a loaded machine. */
const SLOW = 180_000

interface Created {
  readonly id: string
  readonly name: string
  readonly role: string
  readonly principalId: string
  readonly token: string
}

describe("llm-relay tokens", () => {
  it(
    "create prints the token once as JSON, a new principal; --principal issues another token for it; list shows the principal; revoke says whose",
    async () => {
      const first = await run(["create", "--role", "publisher", "--name", "gpu-box"])
      assert.strictEqual(first.code, 0, first.output)
      const created = JSON.parse(first.output) as Created
      assert.deepStrictEqual(Object.keys(created), ["id", "name", "role", "principalId", "token"])
      assert.match(created.principalId, /^prn_/)
      assert.deepStrictEqual(Option.getOrThrow(await verify(created.token)), {
        id: created.principalId,
        tokenId: created.id,
        name: "gpu-box",
        role: "publisher"
      })

      const second = await run([
        "create",
        "--role",
        "client",
        "--name",
        "gpu-box-2",
        "--principal",
        created.principalId
      ])
      assert.strictEqual(second.code, 0, second.output)
      const rotated = JSON.parse(second.output) as Created
      assert.strictEqual(rotated.principalId, created.principalId)
      assert.strictEqual(Option.getOrThrow(await verify(rotated.token)).id, created.principalId)

      const listed = await run(["list"])
      assert.strictEqual(listed.code, 0, listed.output)
      const lines = listed.output.trim().split("\n")
      assert.match(lines[0]!, /^ID\s+NAME\s+ROLE\s+PRINCIPAL\s+CREATED\s+REVOKED$/)
      for (const token of [created, rotated]) {
        const line = lines.find((l) => l.startsWith(`${token.id} `))
        assert.isDefined(line, listed.output)
        assert.match(
          line!,
          new RegExp(`^${token.id}\\s+${token.name}\\s+${token.role}\\s+${created.principalId}\\s+\\S+\\s+-$`)
        )
      }
      assert.notInclude(listed.output, created.token)

      const revoked = await run(["revoke", created.id])
      assert.strictEqual(revoked.code, 0, revoked.output)
      assert.include(revoked.output, `revoked ${created.id} (principal ${created.principalId})`)
      assert.isTrue(Option.isNone(await verify(created.token)))
      assert.isTrue(Option.isSome(await verify(rotated.token)), "the principal's other token still works")
      const again = await run(["revoke", created.id])
      assert.strictEqual(again.code, 0, again.output)
      assert.include(again.output, "already revoked")
    },
    SLOW
  )

  it(
    "an unknown --principal or token id exits 1 naming it; a malformed --principal or role exits 2; nothing is made",
    async () => {
      const unknown = await run(["create", "--role", "client", "--name", "x", "--principal", "prn_nobody"])
      assert.strictEqual(unknown.code, 1, unknown.output)
      assert.match(unknown.output, /llm-relay tokens create: principalId: .*'prn_nobody'/)
      const malformed = await run(["create", "--role", "client", "--name", "x", "--principal", "not an id"])
      assert.strictEqual(malformed.code, 2, malformed.output)
      assert.match(malformed.output, /--principal must be 1-128 characters/)
      const missing = await run(["revoke", "tok_nobody"])
      assert.strictEqual(missing.code, 1, missing.output)
      assert.match(missing.output, /llm-relay tokens revoke: no token 'tok_nobody'/)
      const names = await withTokens((tokens) => Effect.map(tokens.list, (all) => all.map((t) => t.name)))
      assert.notInclude(names, "x", "no token was made")
    },
    SLOW
  )
})
