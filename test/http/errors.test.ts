/**
 * The error contract of the HTTP API, on the real server and a real database:
 * every failure leaves in the wire shape with its class's status (readyz's
 * NotReady included, with the database gone), the OpenAPI document shows that
 * shape, and U+0000 is refused while decoding, naming the field, before any
 * statement runs.
 */
import { Reactivity } from "@effect/experimental"
import { HttpServer } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { assert, describe, it, layer } from "@effect/vitest"
import { Effect, Layer, Redacted, Schedule } from "effect"
import * as Relay from "../../src/index.js"
import { ConfigTest } from "../support/layers.js"
import * as TestDatabase from "../support/TestDatabase.js"

const AppLive = Relay.HttpLive.pipe(
  Layer.provideMerge(Relay.NodeServerLive({ host: "127.0.0.1", port: 0 })),
  Layer.provideMerge(Relay.layer.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest))))
)

const baseUrl = Effect.gen(function*() {
  const address = (yield* HttpServer.HttpServer).address
  if (address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP address")
  return `http://127.0.0.1:${address.port}`
})

const call = (path: string, init: RequestInit & { readonly token?: string } = {}) =>
  Effect.gen(function*() {
    const url = yield* baseUrl
    const { token, ...rest } = init
    return yield* Effect.promise(async () => {
      const response = await fetch(`${url}${path}`, {
        ...rest,
        headers: {
          "content-type": "application/json",
          ...(token === undefined ? {} : { authorization: `Bearer ${token}` })
        }
      })
      const text = await response.text()
      return { status: response.status, body: text.length > 0 ? JSON.parse(text) : null }
    })
  })

const token = (role: Relay.Role) =>
  Effect.flatMap(Relay.Tokens, (tokens) => tokens.create({ role, name: `errors-${role}` }))

/** The answer is the wire error `type`, with its snake_case code and a message matching `message`. */
const assertWireError = (
  answer: Effect.Effect.Success<ReturnType<typeof call>>,
  status: number,
  type: string,
  message?: RegExp
) => {
  assert.strictEqual(answer.status, status, JSON.stringify(answer.body))
  assert.deepStrictEqual(Object.keys(answer.body), ["error"])
  const { error } = answer.body
  assert.deepStrictEqual(Object.keys(error).sort(), ["code", "message", "type"])
  assert.strictEqual(error.type, type)
  assert.strictEqual(error.code, type.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase())
  if (message !== undefined) assert.match(error.message, message)
}

interface JsonSchema {
  readonly $ref?: string
  readonly anyOf?: ReadonlyArray<JsonSchema>
  readonly type?: string
  readonly enum?: ReadonlyArray<unknown>
  readonly required?: ReadonlyArray<string>
  readonly properties?: Readonly<Record<string, JsonSchema>>
}

interface OpenApiDocument {
  readonly paths: Readonly<
    Record<
      string,
      Readonly<
        Record<
          string,
          {
            readonly responses: Readonly<
              Record<string, { readonly content?: Readonly<Record<string, { readonly schema: JsonSchema }>> }>
            >
          }
        >
      >
    >
  >
  readonly components: { readonly schemas: Readonly<Record<string, JsonSchema>> }
}

layer(AppLive, { timeout: 120_000, excludeTestServices: true })("the wire error shape", (it) => {
  it.effect("the OpenAPI document shows every error response as {error:{type,code,message}}", () =>
    Effect.gen(function*() {
      const spec: OpenApiDocument = (yield* call("/openapi.json")).body
      const resolve = (schema: JsonSchema): ReadonlyArray<JsonSchema> =>
        schema.$ref !== undefined
          ? resolve(spec.components.schemas[schema.$ref.replace("#/components/schemas/", "")]!)
          : schema.anyOf !== undefined
          ? schema.anyOf.flatMap(resolve)
          : [schema]
      let checked = 0
      for (const [path, operations] of Object.entries(spec.paths)) {
        for (const [method, operation] of Object.entries(operations)) {
          for (const [status, response] of Object.entries(operation.responses)) {
            if (Number(status) < 400) continue
            for (const schema of resolve(response.content!["application/json"]!.schema)) {
              const where = `${method.toUpperCase()} ${path} ${status}`
              assert.deepStrictEqual(schema.required, ["error"], where)
              assert.deepStrictEqual(schema.properties?.error?.required, ["type", "code", "message"], where)
              assert.strictEqual(schema.properties?.error?.properties?.message?.type, "string", where)
              checked++
            }
          }
        }
      }
      assert.isAbove(checked, 100)
      assert.notInclude(JSON.stringify(spec), "_tag", "no error advertises the class's {_tag, message}")
      const unavailable = resolve(spec.paths["/readyz"]!.get!.responses["503"]!.content!["application/json"]!.schema)
      assert.deepInclude(
        unavailable.map((schema) => schema.properties?.error?.properties?.type?.enum?.[0]),
        "NotReady"
      )
      const forbidden = resolve(spec.paths["/v1/tokens"]!.post!.responses["403"]!.content!["application/json"]!.schema)
      assert.deepStrictEqual(forbidden[0]!.properties?.error?.properties?.code?.enum, ["forbidden"])
    }))

  it.effect("U+0000 in a path, a query parameter, a cursor or a body key: 400 BadRequest naming it", () =>
    Effect.gen(function*() {
      const client = (yield* token("client")).token
      const publisher = (yield* token("publisher")).token
      const admin = (yield* token("admin")).token
      assertWireError(yield* call("/v1/tasks/a%00b", { token: client }), 400, "BadRequest", /^id: .*NUL/)
      assertWireError(yield* call("/v1/tasks?agentId=a%00b", { token: client }), 400, "BadRequest", /^agentId: .*NUL/)
      const cursor = Buffer.from(`${Date.now()}:a\u0000b`).toString("base64url")
      assertWireError(yield* call(`/v1/tasks?cursor=${cursor}`, { token: client }), 400, "BadRequest", /cursor/)
      assertWireError(
        yield* call("/v1/tasks", {
          method: "POST",
          token: client,
          body: JSON.stringify({ model: "m", body: { messages: [{ "ro\u0000le": "user" }] } })
        }),
        400,
        "BadRequest",
        /^body\.messages\[0\]\.ro.le: .*NUL/
      )
      assertWireError(
        yield* call("/v1/publishers/sessions", {
          method: "POST",
          token: publisher,
          body: JSON.stringify({ providers: [{ name: "nul", model: "m", description: "a\u0000b" }] })
        }),
        400,
        "BadRequest",
        /^providers\[0\]\.description: .*NUL/
      )
      assertWireError(
        yield* call("/v1/llms/a%00b", { method: "DELETE", token: admin }),
        400,
        "BadRequest",
        /^name: .*NUL/
      )
      assert.strictEqual((yield* call("/v1/llms", { token: client })).status, 200)
    }))

  it.effect("a lone UTF-16 surrogate in a client's body (value or key): 400 BadRequest naming it, not a 500", () =>
    Effect.gen(function*() {
      const client = (yield* token("client")).token
      // JSON.stringify writes a lone surrogate as the escape \ud800, as a hostile client would send it
      const lone = JSON.stringify({ model: "m", body: { messages: [{ role: "user", content: "a\ud800b" }] } })
      assert.include(lone, "\\ud800")
      assertWireError(
        yield* call("/v1/tasks", { method: "POST", token: client, body: lone }),
        400,
        "BadRequest",
        /^body\.messages\[0\]\.content: .*lone UTF-16 surrogate/
      )
      assertWireError(
        yield* call("/v1/chat/completions", {
          method: "POST",
          token: client,
          body: JSON.stringify({ model: "m", messages: [{ ["\udc00key"]: "x" }] })
        }),
        400,
        "BadRequest",
        /^messages\[0\]\..*: .*lone UTF-16 surrogate/
      )
      // a surrogate pair is a character like any other
      const pair = yield* call("/v1/tasks", {
        method: "POST",
        token: client,
        body: JSON.stringify({ model: "no-such-model", body: { messages: [{ content: "\ud83d\ude00" }] } })
      })
      assertWireError(pair, 404, "ModelNotFound")
    }))

  it.effect("hostile values that were 500s are 400s naming the field: a cursor of no Date, a priority out of range", () =>
    Effect.gen(function*() {
      const client = (yield* token("client")).token
      const admin = (yield* token("admin")).token
      // a cursor decoding to a number no Date holds
      const cursor = Buffer.from("99999999999999999999:x").toString("base64url")
      assertWireError(yield* call(`/v1/tasks?cursor=${cursor}`, { token: client }), 400, "BadRequest", /cursor/)
      const task = (priority: number, who: string) =>
        call("/v1/tasks", {
          method: "POST",
          token: who,
          body: JSON.stringify({ model: "no-such-model", priority, body: { messages: [] } })
        })
      assertWireError(yield* task(1000, admin), 400, "BadRequest", /^priority: .*-100 to 100/)
      // a client may not jump the queue; an admin may (the unknown model answers next)
      assertWireError(yield* task(1, client), 400, "BadRequest", /priority/)
      assertWireError(yield* task(50, admin), 404, "ModelNotFound")
      assertWireError(yield* task(-100, client), 404, "ModelNotFound")
    }))

  it.effect("JSON nested 4,500 levels deep, and a 7 MB value of the wrong type: 400s with short messages", () =>
    Effect.gen(function*() {
      const client = (yield* token("client")).token
      const deep = `{"model":"m","messages":${"[".repeat(4500)}${"]".repeat(4500)}}`
      const nested = yield* call("/v1/chat/completions", { method: "POST", token: client, body: deep })
      assertWireError(nested, 400, "BadRequest", /nested deeper than 128 levels/)
      assert.isBelow(JSON.stringify(nested.body).length, 1000)
      const big = JSON.stringify({ model: "m", body: "x".repeat(7 * 1024 * 1024) })
      const wrongType = yield* call("/v1/tasks", { method: "POST", token: client, body: big })
      assertWireError(wrongType, 400, "BadRequest", /^body: /)
      assert.isBelow(JSON.stringify(wrongType.body).length, 1000, "the value is not echoed whole")
      // at most 200 characters of the value itself (PROTOCOL v1.1)
      const quoted = /x+/.exec((wrongType.body as { error: { message: string } }).error.message)?.[0] ?? ""
      assert.isAtMost(quoted.length, 200)
    }))

  it.effect("a form on a JSON route, a public URL with credentials: 400s; clients do not see which session serves a row", () =>
    Effect.gen(function*() {
      const url = yield* baseUrl
      const admin = (yield* token("admin")).token
      const client = (yield* token("client")).token
      const publisher = (yield* token("publisher")).token
      const form = new FormData()
      form.set("role", "admin")
      form.set("name", "from-a-form")
      const posted = yield* Effect.promise(() =>
        fetch(`${url}/v1/tokens`, { method: "POST", headers: { authorization: `Bearer ${admin}` }, body: form })
          .then(async (r) => ({ status: r.status, body: await r.json() }))
      )
      assertWireError(posted, 400, "BadRequest", /must be JSON/)
      const encoded = yield* Effect.promise(() =>
        fetch(`${url}/v1/tokens`, {
          method: "POST",
          headers: { authorization: `Bearer ${admin}`, "content-type": "application/x-www-form-urlencoded" },
          body: "role=admin&name=x"
        }).then(async (r) => ({ status: r.status, body: await r.json() }))
      )
      assertWireError(encoded, 400, "BadRequest", /must be JSON/)
      const listed = yield* call("/v1/tokens", { token: admin })
      assert.notInclude(JSON.stringify(listed.body), "from-a-form", "no token was made from the form")

      const withCredentials = yield* call("/v1/llms", {
        method: "POST",
        token: admin,
        body: JSON.stringify({ name: "creds", model: "m", url: "http://user:hunter2@upstream.example/v1" })
      })
      assertWireError(withCredentials, 400, "BadRequest", /^url: .*credentials/)
      assert.notInclude(JSON.stringify(withCredentials.body), "hunter2")

      const registered = yield* call("/v1/publishers/sessions", {
        method: "POST",
        token: publisher,
        body: JSON.stringify({ sessionId: "sess-visible-1", providers: [{ name: "whose-row", model: "m" }] })
      })
      assert.strictEqual(registered.status, 200)
      const row = (answer: Effect.Effect.Success<ReturnType<typeof call>>) =>
        (answer.body.data as Array<{ name: string; providerSessionId: string | null }>).find((l) =>
          l.name === "whose-row"
        )!
      assert.isNull(row(yield* call("/v1/llms", { token: client })).providerSessionId)
      assert.strictEqual(row(yield* call("/v1/llms", { token: publisher })).providerSessionId, "sess-visible-1")
    }))

  it.effect("a 404 for an unknown route names the path, never the query string (it may hold a secret)", () =>
    Effect.gen(function*() {
      const client = (yield* token("client")).token
      const answer = yield* call("/v1/nope?api_key=sk-secret-value", { token: client })
      assertWireError(answer, 404, "NotFound", /\/v1\/nope/)
      assert.notInclude(JSON.stringify(answer.body), "sk-secret-value")
    }))

  it.effect("each error leaves with its class's status: 404 for an unknown route, 413 PayloadTooLarge, 403 Forbidden", () =>
    Effect.gen(function*() {
      const client = (yield* token("client")).token
      assertWireError(yield* call("/v1/nope", { token: client }), 404, "NotFound")
      assertWireError(yield* call("/v1/tasks/nope", { token: client }), 404, "TaskNotFound")
      assertWireError(yield* call("/v1/tokens", { token: client }), 403, "Forbidden", /admin role/)
      assertWireError(yield* call("/v1/tasks"), 401, "Unauthorized")
      const big = JSON.stringify({ model: "m", body: { text: "a".repeat(9 * 1024 * 1024) } })
      assertWireError(yield* call("/v1/tasks", { method: "POST", token: client, body: big }), 413, "PayloadTooLarge")
    }))
})

/** Statements on the server's maintenance database, as its superuser. */
const onServer = <A>(f: (sql: SqlClient.SqlClient) => Effect.Effect<A, unknown>) =>
  Effect.scoped(
    Effect.flatMap(PgClient.make({ url: Redacted.make(TestDatabase.serverUrl()), maxConnections: 1 }), f)
  ).pipe(Effect.provide(Reactivity.layer), Effect.orDie)

describe("readiness", () => {
  it.live(
    "GET /readyz with the database gone: 503 NotReady in the wire shape, 200 again once it is back",
    () =>
      Effect.gen(function*() {
        assert.deepStrictEqual(yield* call("/readyz"), { status: 200, body: { status: "ready" } })
        const sql = yield* SqlClient.SqlClient
        const [{ name }] = yield* sql<{ name: string }>`SELECT current_database() AS name`
        // no new connections, and the broker's open ones ended: the database is gone for the broker
        yield* Effect.acquireRelease(
          onServer((admin) =>
            Effect.zipRight(
              admin`ALTER DATABASE ${admin(name)} WITH ALLOW_CONNECTIONS false`,
              admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ${name}`
            )
          ),
          () => onServer((admin) => admin`ALTER DATABASE ${admin(name)} WITH ALLOW_CONNECTIONS true`)
        )
        assertWireError(yield* call("/readyz"), 503, "NotReady", /database/)
        assertWireError(yield* call("/readyz"), 503, "NotReady", /database/)
        yield* onServer((admin) => admin`ALTER DATABASE ${admin(name)} WITH ALLOW_CONNECTIONS true`)
        const back = yield* call("/readyz").pipe(
          Effect.filterOrFail((answer) => answer.status === 200),
          Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 50 }),
          Effect.orElse(() => call("/readyz"))
        )
        assert.deepStrictEqual(back, { status: 200, body: { status: "ready" } })
      }).pipe(Effect.scoped, Effect.provide(AppLive)),
    120_000
  )
})
