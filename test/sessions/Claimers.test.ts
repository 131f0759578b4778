/**
 * The claimers registry on its own (no database): which session actor a pool
 * wake reaches, and when a woken claimer passes its wake on. Each claimer
 * here records its wake-ups; a "claim" is `claimStarts` then `claimEnded`
 * with the room a claim statement would have found.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { type Claimer, type Found, make } from "../../src/sessions/Claimers.js"

const setup = Effect.gen(function*() {
  const claimers = yield* make
  const woken: Array<string> = []
  const scopes = new Map<string, Scope.CloseableScope>()
  /** A session serving one row `${id}-row` of `pool` with `capacity` slots, all free. */
  const join = (id: string, pool: string, capacity: number) =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      scopes.set(id, scope)
      const claimer = yield* Scope.extend(claimers.join(id, Effect.sync(() => woken.push(id))), scope)
      yield* claimer.serve([{ name: `${id}-row`, pool, maxConcurrent: capacity }])
      return claimer
    })
  const leave = (id: string) => Scope.close(scopes.get(id)!, Exit.void)
  /** The sessions woken since the last call. */
  const takeWoken = Effect.sync(() => woken.splice(0))
  return { claimers, join, leave, takeWoken }
})

/** A claim of a one-row session: free slots before it, tasks taken, whether unpinned work is left. */
const claim = (claimer: Claimer, id: string, pool: string, free: number, taken: number, more = false) =>
  Effect.zipRight(
    claimer.claimStarts,
    claimer.claimEnded([{ llmName: `${id}-row`, pool, free, taken, more } satisfies Found])
  )

describe("choosing whom a pool wake reaches", () => {
  it.scoped("the claimer with the most room, and a burst spread over them: a wake given counts against room", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      const a = yield* join("a", "p", 3)
      const b = yield* join("b", "p", 2)
      yield* join("c", "p", 1)
      yield* claim(a, "a", "p", 3, 0)
      yield* claim(b, "b", "p", 2, 0)
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a"], "3 free beats 2 and 1")
      // a: 3 - 1 given = 2, b: 2 (never woken: longest ago), c: 1
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["b"], "a tie goes to the one woken longest ago")
      yield* claimers.dispatch({ pool: "p" })
      yield* claimers.dispatch({ pool: "p" })
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a", "c", "b"])
      yield* claimers.dispatch({ pool: "other" })
      assert.deepStrictEqual(yield* takeWoken, [], "nobody serves that pool")
    }))

  it.scoped("a claimer that took tasks has less room; one whose task ended has more again", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      const a = yield* join("a", "p", 2)
      const b = yield* join("b", "p", 2)
      yield* claim(a, "a", "p", 2, 2)
      yield* claim(b, "b", "p", 2, 1)
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["b"], "a is full")
      yield* claim(b, "b", "p", 1, 1)
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, [], "everyone full: nobody (each claims again as a task ends)")
      yield* a.freed("a-row")
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a"])
    }))

  it.scoped("a task pinned to a row wakes that row's session, whatever the room elsewhere", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      yield* join("a", "p", 8)
      const b = yield* join("b", "p", 1)
      yield* claim(b, "b", "p", 1, 1)
      yield* claimers.dispatch({ pool: "p", llmName: "b-row" })
      assert.deepStrictEqual(yield* takeWoken, ["b"])
      yield* claimers.dispatch({ pool: "p", llmName: "elsewhere-row" })
      assert.deepStrictEqual(yield* takeWoken, [], "a row served by no session here")
    }))

  it.scoped("a hand-back wakes another member first; with no other room, the session that handed it back", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      const a = yield* join("a", "p", 4)
      const b = yield* join("b", "p", 1)
      yield* claimers.dispatch({ pool: "p", handedBackBy: "a" })
      assert.deepStrictEqual(yield* takeWoken, ["b"], "not a, though it has more room")
      yield* claim(b, "b", "p", 1, 1)
      yield* claimers.dispatch({ pool: "p", handedBackBy: "a" })
      assert.deepStrictEqual(yield* takeWoken, ["a"], "b is full: a takes it back (or skips it while b is online)")
      // a skipped it and has room: the wake is spent, it does not come back to a
      yield* claim(a, "a", "p", 4, 0, true)
      assert.deepStrictEqual(yield* takeWoken, [])
    }))
})

describe("passing a wake on", () => {
  it.scoped("a claimer that filled up with unpinned work left passes one wake on; one with room left does not", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      const a = yield* join("a", "p", 1)
      const b = yield* join("b", "p", 1)
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a"])
      yield* claim(a, "a", "p", 1, 1, false)
      assert.deepStrictEqual(yield* takeWoken, [], "filled up, nothing left: no one else")
      yield* a.freed("a-row")
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["b"])
      yield* claim(b, "b", "p", 1, 1, true)
      assert.deepStrictEqual(yield* takeWoken, ["a"], "filled up with work left: the next one looks")
      yield* claim(a, "a", "p", 1, 0)
      assert.deepStrictEqual(yield* takeWoken, [], "room left: it saw everything")
    }))

  it.scoped("a claimer that could take nothing in the pool (its row unhealthy or full) passes every wake on", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      const a = yield* join("a", "p", 4)
      yield* join("b", "p", 1)
      yield* claimers.dispatch({ pool: "p" })
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a", "a"])
      // its row unhealthy: the claim statement found no row of it in the pool
      yield* a.claimStarts
      yield* a.claimEnded([])
      assert.deepStrictEqual(yield* takeWoken, ["b", "b"])
    }))

  it.scoped("took fewer tasks than it was woken for and filled up with work left: the rest go on", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      const a = yield* join("a", "p", 3)
      yield* join("b", "p", 2)
      yield* join("c", "p", 2)
      for (let i = 0; i < 3; i++) yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a", "b", "c"])
      for (let i = 0; i < 3; i++) yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a", "b", "c"])
      // it had only 1 free slot after all (more had ended than it was told)
      yield* claim(a, "a", "p", 1, 1, true)
      assert.deepStrictEqual(yield* takeWoken, ["b"], "one wake on: b and c hold two each, b was woken first")
    }))

  it.scoped("a claimer that leaves passes on the wakes it had not answered, waiting or being answered", () =>
    Effect.gen(function*() {
      const { claimers, join, leave, takeWoken } = yield* setup
      const a = yield* join("a", "p", 3)
      yield* join("b", "p", 1)
      yield* claimers.dispatch({ pool: "p" })
      yield* a.claimStarts
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a", "a"], "the second while its claim runs")
      yield* leave("a")
      assert.deepStrictEqual(yield* takeWoken, ["b", "b"])
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["b"], "a is gone")
    }))

  it.scoped("a task that ends while a claim runs counts as room after it (the claim may not have seen it)", () =>
    Effect.gen(function*() {
      const { claimers, join, takeWoken } = yield* setup
      const a = yield* join("a", "p", 1)
      yield* a.claimStarts
      yield* a.freed("a-row")
      yield* a.claimEnded([{ llmName: "a-row", pool: "p", free: 0, taken: 0, more: false }])
      yield* claimers.dispatch({ pool: "p" })
      assert.deepStrictEqual(yield* takeWoken, ["a"])
    }))
})
