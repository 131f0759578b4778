import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Option, TestClock } from "effect"
import { Registry } from "../../src/registry/Registry.js"
import { RegistryTest } from "../support/layers.js"
import { insertPublic, provider } from "../support/registry.js"

const countLlms = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql<{ n: number }>`SELECT count(*)::int AS n FROM llm_relay.llms`.pipe(Effect.map((r) => r[0]!.n))
)

describe("registering a publisher session", () => {
  it.effect("inserts new virtual rows, active, owned by the new session", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const result = yield* registry.register("principal-a", { providers: [provider("vllm-local")] })
      assert.match(result.sessionId, /^[0-9a-f-]{36}$/)
      assert.strictEqual(result.llms.length, 1)
      const llm = result.llms[0]!
      assert.strictEqual(llm.kind, "virtual")
      assert.strictEqual(llm.status, "active")
      assert.strictEqual(llm.providerSessionId, result.sessionId)
      assert.strictEqual(llm.pool, "vllm-local")
      assert.strictEqual(llm.tier, "fast")
      assert.strictEqual(llm.maxConcurrent, 4)
      assert.isNotNull(llm.lastHeartbeatAt)
      assert.strictEqual(result.heartbeatIntervalMs, 30_000)
      assert.strictEqual(result.heartbeatTimeoutMs, 90_000)
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("reuses the same row on sticky reconnect (same name and sessionId)", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const first = yield* registry.register("p", { sessionId: "fixed-id-1", providers: [provider("vllm-local")] })
      const second = yield* registry.register("p", {
        sessionId: "fixed-id-1",
        providers: [provider("vllm-local", { model: "m-updated", pool: "qwen", maxConcurrent: 2 })]
      })
      assert.strictEqual(second.llms[0]!.id, first.llms[0]!.id)
      assert.strictEqual(second.llms[0]!.model, "m-updated")
      assert.strictEqual(second.llms[0]!.pool, "qwen")
      assert.strictEqual(second.llms[0]!.maxConcurrent, 2)
      assert.strictEqual(yield* countLlms, 1)
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("refuses to publish over a public LLM, and writes nothing", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* insertPublic("qwen3-thinking")
      const failure = yield* Effect.flip(
        registry.register("p", {
          sessionId: "sess-xxxx",
          providers: [provider("fresh-one"), provider("qwen3-thinking")]
        })
      )
      assert.strictEqual(failure._tag, "NameConflict")
      assert.match(failure.message, /public/)
      // neither the new name nor the session was written
      assert.strictEqual(yield* countLlms, 1)
      assert.isTrue(Option.isNone(yield* registry.findSession("sess-xxxx")))
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("refuses a name another session holds active, and writes nothing", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("p", { sessionId: "other-session", providers: [provider("vllm-local")] })
      const failure = yield* Effect.flip(
        registry.register("p", { sessionId: "mine-session", providers: [provider("new-name"), provider("vllm-local")] })
      )
      assert.strictEqual(failure._tag, "NameConflict")
      assert.match(failure.message, /already active under a different session/)
      assert.strictEqual(yield* countLlms, 1)
      const row = yield* registry.findByName("vllm-local")
      assert.strictEqual(Option.getOrThrow(row).providerSessionId, "other-session")
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("adopts an inactive virtual row of another session, keeping its id", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const old = yield* registry.register("p", { sessionId: "old-session", providers: [provider("vllm-local")] })
      yield* registry.unbindSession("old-session", false)
      const adopted = yield* registry.register("p", { sessionId: "new-session", providers: [provider("vllm-local")] })
      const llm = adopted.llms[0]!
      assert.strictEqual(llm.id, old.llms[0]!.id)
      assert.strictEqual(llm.providerSessionId, "new-session")
      assert.strictEqual(llm.status, "active")
      assert.isNull(llm.inactiveSince)
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("answers Forbidden for a known sessionId of another principal", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("alice", { sessionId: "alice-session", providers: [provider("a")] })
      const failure = yield* Effect.flip(
        registry.register("mallory", { sessionId: "alice-session", providers: [provider("b")] })
      )
      assert.strictEqual(failure._tag, "Forbidden")
      assert.isTrue(Option.isNone(yield* registry.findByName("b")))
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("makes rows the session no longer lists inactive, for good: its stream and heartbeat do not revive them", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* TestClock.setTime(1_000)
      yield* registry.register("p", { sessionId: "sess-0001", providers: [provider("a"), provider("b")] })
      yield* TestClock.setTime(2_000)
      yield* registry.register("p", { sessionId: "sess-0001", providers: [provider("a")] })
      const b = Option.getOrThrow(yield* registry.findByName("b"))
      assert.strictEqual(b.status, "inactive")
      assert.strictEqual(b.inactiveSince?.getTime(), 2_000)
      assert.isNull(b.providerSessionId, "a dropped row leaves the session")
      assert.strictEqual(Option.getOrThrow(yield* registry.findByName("a")).status, "active")
      // the session's stream opening or its heartbeat does not bring it back…
      yield* registry.bindSession("sess-0001")
      yield* registry.heartbeat("sess-0001")
      assert.strictEqual(Option.getOrThrow(yield* registry.findByName("b")).status, "inactive")
      // …listing it again does, as the same row
      yield* registry.register("p", { sessionId: "sess-0001", providers: [provider("a"), provider("b")] })
      const back = Option.getOrThrow(yield* registry.findByName("b"))
      assert.deepStrictEqual([back.id, back.status, back.providerSessionId], [b.id, "active", "sess-0001"])
    }).pipe(Effect.provide(RegistryTest)))

  describe("rejects bad input with BadRequest naming the field, writing nothing", () => {
    const cases: ReadonlyArray<[string, unknown, RegExp]> = [
      ["an empty provider list", { providers: [] }, /providers/],
      ["a missing provider list", {}, /providers/],
      ["an over-long name", { providers: [provider("x".repeat(129))] }, /providers\[0\]\.name/],
      ["a name with bad characters", { providers: [provider("bad name!")] }, /providers\[0\]\.name/],
      ["maxConcurrent 0", { providers: [provider("ok", { maxConcurrent: 0 })] }, /maxConcurrent/],
      ["maxConcurrent 1025", { providers: [provider("ok", { maxConcurrent: 1025 })] }, /maxConcurrent/],
      ["a short sessionId", { sessionId: "short", providers: [provider("ok")] }, /sessionId/],
      [
        "a sessionId with bad characters",
        { sessionId: "bad id with spaces", providers: [provider("ok")] },
        /sessionId/
      ],
      ["65 providers", { providers: Array.from({ length: 65 }, (_, i) => provider(`p${i}`)) }, /providers/],
      ["a name listed twice", { providers: [provider("dup"), provider("dup")] }, /dup/],
      ["a body that is not an object", "nope", /object|Expected/]
    ]
    for (const [label, input, field] of cases) {
      it.effect(label, () =>
        Effect.gen(function*() {
          const registry = yield* Registry
          const failure = yield* Effect.flip(registry.register("p", input))
          assert.strictEqual(failure._tag, "BadRequest")
          assert.match(failure.message, field)
          assert.strictEqual(yield* countLlms, 0)
        }).pipe(Effect.provide(RegistryTest)))
    }
  })
})

describe("a session's heartbeat and binding", () => {
  it.effect("a heartbeat records when it came and revives an inactive row", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* TestClock.setTime(10_000)
      yield* registry.register("p", { sessionId: "sess-heart", providers: [provider("vllm-local")] })
      yield* registry.unbindSession("sess-heart", false)
      yield* TestClock.setTime(15_000)
      yield* registry.heartbeat("sess-heart")
      const row = Option.getOrThrow(yield* registry.findByName("vllm-local"))
      assert.strictEqual(row.status, "active")
      assert.isNull(row.inactiveSince)
      assert.strictEqual(row.lastHeartbeatAt?.getTime(), 15_000)
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("a heartbeat of an unknown session is SessionNotFound", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const failure = yield* Effect.flip(registry.heartbeat("no-such-session"))
      assert.strictEqual(failure._tag, "SessionNotFound")
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("unbinding a session makes only its own rows inactive", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("p", { sessionId: "sess-mine", providers: [provider("a"), provider("b")] })
      yield* registry.register("p", { sessionId: "sess-other", providers: [provider("c")] })
      const flipped = yield* registry.unbindSession("sess-mine", false)
      assert.deepStrictEqual(flipped.map((l) => l.name).sort(), ["a", "b"])
      const status = (name: string) => Effect.map(registry.findByName(name), (o) => Option.getOrThrow(o).status)
      assert.strictEqual(yield* status("a"), "inactive")
      assert.strictEqual(yield* status("b"), "inactive")
      assert.strictEqual(yield* status("c"), "active")
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("binding a session brings its rows back online", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("p", { sessionId: "sess-bind", providers: [provider("a")] })
      yield* registry.unbindSession("sess-bind", false)
      yield* registry.bindSession("sess-bind")
      assert.strictEqual(Option.getOrThrow(yield* registry.findByName("a")).status, "active")
    }).pipe(Effect.provide(RegistryTest)))
})

describe("the registry's sweep of silent and long-inactive rows", () => {
  it.effect("flips heartbeat-stale active rows to inactive and leaves fresh ones", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("p", { sessionId: "sess-stale", providers: [provider("stale")] })
      yield* TestClock.adjust("60 seconds")
      yield* registry.register("p", { sessionId: "sess-fresh", providers: [provider("fresh")] })
      yield* TestClock.adjust("31 seconds") // stale: 91 s silent; fresh: 31 s
      const result = yield* registry.gcSweep
      assert.strictEqual(result.markedInactive, 1)
      assert.deepStrictEqual(result.staleSessions, ["sess-stale"])
      assert.strictEqual(Option.getOrThrow(yield* registry.findByName("stale")).status, "inactive")
      assert.strictEqual(Option.getOrThrow(yield* registry.findByName("fresh")).status, "active")
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("deletes virtual rows inactive past the 4 h retention, keeps recent and public ones", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* insertPublic("public-survivor")
      yield* registry.register("p", { sessionId: "sess-old1", providers: [provider("old")] })
      yield* registry.unbindSession("sess-old1", false)
      yield* TestClock.adjust("3 hours")
      yield* registry.register("p", { sessionId: "sess-rec1", providers: [provider("recent")] })
      yield* registry.unbindSession("sess-rec1", false)
      yield* TestClock.adjust("61 minutes") // old: 4h01m inactive; recent: 1h01m
      const result = yield* registry.gcSweep
      assert.strictEqual(result.deleted, 1)
      assert.isTrue(Option.isNone(yield* registry.findByName("old")))
      assert.isTrue(Option.isSome(yield* registry.findByName("recent")))
      assert.isTrue(Option.isSome(yield* registry.findByName("public-survivor")))
    }).pipe(Effect.provide(RegistryTest)))

  it.effect("is idempotent: a second sweep right after does nothing", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* registry.register("p", { sessionId: "sess-stale", providers: [provider("stale")] })
      yield* TestClock.adjust("5 minutes")
      const first = yield* registry.gcSweep
      const second = yield* registry.gcSweep
      assert.strictEqual(first.markedInactive, 1)
      assert.strictEqual(second.markedInactive, 0)
      assert.strictEqual(second.deleted, 0)
      assert.deepStrictEqual(second.staleSessions, [])
    }).pipe(Effect.provide(RegistryTest)))
})
