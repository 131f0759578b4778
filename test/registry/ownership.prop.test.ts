/**
 * Property (issue 14): random registration sequences by three principals —
 * registering sessions with one or two providers drawn from a handful of
 * names and pools, saying goodbye, an admin sharing and closing pools — never
 * let a principal's calls reach another principal's publisher, except
 * through a pool an admin shared.
 *
 * "Whose is a model name" is decided by the run itself: the first principal
 * whose registration succeeded with that name as an LLM or a pool. A call for
 * a name goes where routing sends it (the row of that name when it is pinned
 * to another pool, else the pool's members); every row there must be that
 * principal's unless the pool was shared at some point of the run.
 */
import { SqlClient } from "@effect/sql"
import { assert, layer } from "@effect/vitest"
import { Effect, Either, FastCheck as fc } from "effect"
import type { LlmRow } from "../../src/domain/Llm.js"
import { Registry } from "../../src/registry/Registry.js"
import { RegistryTest } from "../support/layers.js"

const PRINCIPALS = ["p0", "p1", "p2"] as const
const NAMES = ["x", "y", "z", "w"] as const

type Command =
  | {
    readonly _tag: "Register"
    readonly principal: number
    readonly session: number
    readonly providers: ReadonlyArray<{ readonly name: number; readonly pool: number | null }>
  }
  | { readonly _tag: "Goodbye"; readonly principal: number; readonly session: number }
  | { readonly _tag: "Share"; readonly pool: number; readonly shared: boolean }

const name = fc.integer({ min: 0, max: NAMES.length - 1 })
const command: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      _tag: fc.constant("Register" as const),
      principal: fc.integer({ min: 0, max: 2 }),
      session: fc.integer({ min: 0, max: 1 }),
      providers: fc.uniqueArray(fc.record({ name, pool: fc.option(name, { nil: null }) }), {
        minLength: 1,
        maxLength: 2,
        selector: (p) => p.name
      })
    })
  },
  {
    weight: 2,
    arbitrary: fc.record({
      _tag: fc.constant("Goodbye" as const),
      principal: fc.integer({ min: 0, max: 2 }),
      session: fc.integer({ min: 0, max: 1 })
    })
  },
  { weight: 1, arbitrary: fc.record({ _tag: fc.constant("Share" as const), pool: name, shared: fc.boolean() }) }
)

let run = 0

/** Where a call for `model` goes: the rows routing may hand it to. */
const destinations = (model: string, rows: ReadonlyArray<LlmRow>) => {
  const named = rows.find((row) => row.name === model)
  if (named !== undefined && named.pool !== named.name) return { pool: named.pool, rows: [named] }
  return { pool: model, rows: rows.filter((row) => row.pool === model) }
}

layer(RegistryTest, { timeout: 120_000 })("ownership of names and pools", (it) => {
  it.effect.prop(
    "no registration sequence lets a call reach another principal's publisher outside a shared pool",
    [fc.array(command, { minLength: 1, maxLength: 20 })],
    ([commands]) =>
      Effect.gen(function*() {
        const registry = yield* Registry
        const sql = yield* SqlClient.SqlClient
        const tag = `r${++run}`
        const nameOf = (i: number) => `${tag}-${NAMES[i]}`
        const principalOf = (i: number) => `${tag}-${PRINCIPALS[i]}`
        const sessionOf = (p: number, s: number) => `${tag}-${PRINCIPALS[p]}-session-${s}`
        const owner = new Map<string, string>()
        const everShared = new Set<string>()
        const refusedFor = new Set<string>()
        for (const c of commands) {
          switch (c._tag) {
            case "Register": {
              const providers = c.providers.map((p) => ({
                name: nameOf(p.name),
                model: "m",
                ...(p.pool === null ? {} : { pool: nameOf(p.pool) })
              }))
              const result = yield* Effect.either(
                registry.register(principalOf(c.principal), { sessionId: sessionOf(c.principal, c.session), providers })
              )
              if (Either.isRight(result)) {
                for (const p of providers) {
                  if (!owner.has(p.name)) owner.set(p.name, principalOf(c.principal))
                  const pool = p.pool ?? p.name
                  if (!owner.has(pool)) owner.set(pool, principalOf(c.principal))
                }
              } else {
                refusedFor.add(result.left._tag)
              }
              break
            }
            case "Goodbye":
              yield* registry.unbindSession(sessionOf(c.principal, c.session), true)
              break
            case "Share": {
              const shared = yield* Effect.either(registry.sharePool(nameOf(c.pool), c.shared))
              if (Either.isRight(shared) && c.shared) everShared.add(nameOf(c.pool))
              break
            }
          }
          // after every step: every name's calls reach only its principal's publishers
          for (const model of NAMES.map((_, i) => nameOf(i))) {
            const whose = owner.get(model)
            if (whose === undefined) continue
            const target = destinations(model, yield* registry.resolve(model))
            if (everShared.has(target.pool)) continue
            for (const row of target.rows) {
              if (row.kind !== "virtual") continue
              assert.strictEqual(
                row.ownerId,
                whose,
                `a call for '${model}' (${whose}'s) can reach '${row.name}' of ${row.ownerId}; commands: ${
                  JSON.stringify(commands)
                }`
              )
            }
          }
        }
        yield* sql`DELETE FROM llm_relay.llms WHERE name LIKE ${`${tag}-%`}`
      }),
    { fastCheck: { numRuns: 25 } }
  )
})
