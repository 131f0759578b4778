/**
 * Names and pools belong to principals (PROTOCOL v1.1, issue 14): another
 * principal's publisher cannot take a name, join or shadow a pool, or adopt
 * an inactive row, unless an admin shares the pool. Then a role × route ×
 * principal matrix of who may do what, over HTTP on a real broker.
 */
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { startBroker, type TestBroker } from "../support/broker.js"

let broker: TestBroker
beforeAll(async () => {
  broker = await startBroker()
})
afterAll(() => broker.close())

const call = async (token: string, method: string, path: string, body?: unknown) => {
  const response = await fetch(`${broker.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const text = await response.text()
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  return { status: response.status, json: (text === "" ? undefined : JSON.parse(text)) as any }
}

let n = 0
const unique = (label: string) => `${label}-${++n}-${Math.random().toString(36).slice(2, 7)}`

const register = (token: string, providers: ReadonlyArray<Record<string, unknown>>, sessionId?: string) =>
  call(token, "POST", "/v1/publishers/sessions", {
    ...(sessionId === undefined ? {} : { sessionId }),
    providers: providers.map((p) => ({ model: "m", ...p }))
  })

const names = async (token: string) =>
  ((await call(token, "GET", "/v1/llms?limit=1000")).json.data as Array<{ name: string }>).map((l) => l.name)

describe("names and pools belong to principals", () => {
  it("another principal cannot take a name, a pool, a pool's name or an LLM's name as pool: 409, nothing stored", async () => {
    const a = await broker.token("publisher")
    const b = await broker.token("publisher")
    const llm = unique("a-llm")
    const member = unique("a-member")
    const pool = unique("a-pool")
    assert.strictEqual((await register(a, [{ name: llm }, { name: member, pool }])).status, 200)
    const before = await names(broker.adminToken)
    const attempts: ReadonlyArray<[string, Record<string, unknown>, RegExp]> = [
      ["A's LLM name", { name: llm }, /already active|another principal/],
      ["A's pool as a name", { name: pool }, /pool of another principal/],
      ["A's pool joined", { name: unique("b"), pool }, /belongs to another principal/],
      ["A's LLM name as a pool", { name: unique("b"), pool: llm }, /another principal/],
      ["A's member name as a pool", { name: unique("b"), pool: member }, /another principal/]
    ]
    for (const [label, provider, message] of attempts) {
      // a valid provider first: all-or-nothing, so it must not be stored either
      const answer = await register(b, [{ name: unique("b-ok") }, provider])
      assert.strictEqual(answer.status, 409, label)
      assert.strictEqual(answer.json.error.type, "NameConflict", label)
      assert.match(answer.json.error.message, message, label)
    }
    assert.deepStrictEqual(await names(broker.adminToken), before, "nothing of the refused requests was stored")
  })

  it("an inactive row is not adopted by another principal; its owner's sticky reconnect gets the same row", async () => {
    const a = await broker.token("publisher")
    const b = await broker.token("publisher")
    const llm = unique("sticky")
    const sessionId = `s-${unique("a")}`
    const first = await register(a, [{ name: llm }], sessionId)
    assert.strictEqual(first.status, 200)
    assert.strictEqual((await call(a, "DELETE", `/v1/publishers/sessions/${sessionId}`)).status, 204)
    const taken = await register(b, [{ name: llm }])
    assert.strictEqual(taken.status, 409)
    assert.match(taken.json.error.message, /another principal/)
    const again = await register(a, [{ name: llm }], sessionId)
    assert.strictEqual(again.status, 200)
    assert.strictEqual(again.json.llms[0].id, first.json.llms[0].id)
    // another session of the same principal may adopt it (the seeds' rule, kept)
    assert.strictEqual((await call(a, "DELETE", `/v1/publishers/sessions/${sessionId}`)).status, 204)
    const adopted = await register(a, [{ name: llm }])
    assert.strictEqual(adopted.status, 200)
    assert.strictEqual(adopted.json.llms[0].id, first.json.llms[0].id)
  })

  it("an admin shares a pool: another principal's members may join (not shadow it); closed again, no new joins", async () => {
    const a = await broker.token("publisher")
    const b = await broker.token("publisher")
    const pool = unique("shared")
    assert.strictEqual((await register(a, [{ name: unique("a"), pool }])).status, 200)
    assert.strictEqual((await call(a, "PUT", `/v1/pools/${pool}`, { shared: true })).status, 403, "admins only")
    const opened = await call(broker.adminToken, "PUT", `/v1/pools/${pool}`, { shared: true })
    assert.strictEqual(opened.status, 200)
    assert.strictEqual(opened.json.shared, true)
    const joiner = unique("b")
    assert.strictEqual((await register(b, [{ name: joiner, pool }])).status, 200)
    // a row named like the pool outside it would take the pool's calls
    const shadow = await register(b, [{ name: pool, pool: unique("elsewhere") }])
    assert.strictEqual(shadow.status, 409)
    const listed = (await call(b, "GET", "/v1/pools")).json.data.find((p: { name: string }) => p.name === pool)
    assert.strictEqual(listed.shared, true)
    assert.include(listed.members, joiner)
    assert.strictEqual(listed.members.length, 2)
    assert.isString(listed.principalId)
    const closed = await call(broker.adminToken, "PUT", `/v1/pools/${pool}`, { shared: false })
    assert.strictEqual(closed.json.shared, false)
    assert.strictEqual((await register(b, [{ name: unique("b2"), pool }])).status, 409)
    const unknown = await call(broker.adminToken, "PUT", `/v1/pools/${unique("nope")}`, { shared: true })
    assert.strictEqual(unknown.status, 404)
    assert.strictEqual(unknown.json.error.type, "ModelNotFound")
    const bad = await call(broker.adminToken, "PUT", `/v1/pools/${pool}`, { shared: "yes" })
    assert.strictEqual(bad.status, 400)
  })

  it("a public LLM's pool is the admins': a publisher may not join it until it is shared", async () => {
    const p = await broker.token("publisher")
    const pool = unique("gpt")
    const created = await call(broker.adminToken, "POST", "/v1/llms", {
      name: unique("gpt-a"),
      model: "gpt",
      url: "http://127.0.0.1:9/v1",
      pool
    })
    assert.strictEqual(created.status, 201)
    assert.strictEqual((await register(p, [{ name: unique("mine"), pool }])).status, 409)
    assert.strictEqual((await call(broker.adminToken, "PUT", `/v1/pools/${pool}`, { shared: true })).status, 200)
    assert.strictEqual((await register(p, [{ name: unique("mine"), pool }])).status, 200)
  })
})

describe("who may do what: role × route × principal", () => {
  it("each route answers each role, for its own and for another principal's things, as PROTOCOL.md says", async () => {
    const owner = await broker.token("publisher")
    const otherPublisher = await broker.token("publisher")
    const ownerClient = await broker.token("client")
    const otherClient = await broker.token("client")
    const admin = broker.adminToken
    const llm = unique("matrix")
    const sessionId = `s-${unique("m")}`
    assert.strictEqual((await register(owner, [{ name: llm }], sessionId)).status, 200)
    const task = await call(ownerClient, "POST", "/v1/tasks", {
      model: llm,
      path: "/v1/chat/completions",
      body: { model: llm, messages: [{ role: "user", content: "hi" }] }
    })
    assert.strictEqual(task.status, 202)
    const taskId = task.json.id as string
    type Row = readonly [label: string, token: string, method: string, path: string, body: unknown, status: number]
    const rows: ReadonlyArray<Row> = [
      // registering: publishers and admins
      ["client registers", ownerClient, "POST", "/v1/publishers/sessions", {
        providers: [{ name: unique("c"), model: "m" }]
      }, 403],
      ["another publisher takes the session id", otherPublisher, "POST", "/v1/publishers/sessions", {
        sessionId,
        providers: [{ name: unique("o"), model: "m" }]
      }, 403],
      [
        "another publisher heartbeats the session",
        otherPublisher,
        "POST",
        `/v1/publishers/sessions/${sessionId}/heartbeat`,
        {},
        403
      ],
      ["the owner heartbeats", owner, "POST", `/v1/publishers/sessions/${sessionId}/heartbeat`, {}, 200],
      ["an admin heartbeats any session", admin, "POST", `/v1/publishers/sessions/${sessionId}/heartbeat`, {}, 200],
      ["a client heartbeats", ownerClient, "POST", `/v1/publishers/sessions/${sessionId}/heartbeat`, {}, 403],
      // tasks: their owner and admins; others cannot even tell they exist
      ["the task's owner reads it", ownerClient, "GET", `/v1/tasks/${taskId}`, undefined, 200],
      ["another client reads it", otherClient, "GET", `/v1/tasks/${taskId}`, undefined, 404],
      ["a publisher reads it", owner, "GET", `/v1/tasks/${taskId}`, undefined, 403],
      ["an admin reads it", admin, "GET", `/v1/tasks/${taskId}`, undefined, 200],
      ["another client cancels it", otherClient, "DELETE", `/v1/tasks/${taskId}`, undefined, 404],
      // registry: reading for all, writing for admins
      ["a client lists pools", ownerClient, "GET", "/v1/pools", undefined, 200],
      ["a publisher shares a pool", owner, "PUT", `/v1/pools/${llm}`, { shared: true }, 403],
      ["a client shares a pool", ownerClient, "PUT", `/v1/pools/${llm}`, { shared: true }, 403],
      ["a publisher adds a public LLM", owner, "POST", "/v1/llms", {
        name: unique("p"),
        model: "m",
        url: "http://127.0.0.1:9/v1"
      }, 403],
      ["a publisher deletes an LLM", owner, "DELETE", `/v1/llms/${llm}`, undefined, 403],
      ["a client makes a token", ownerClient, "POST", "/v1/tokens", { role: "admin", name: "x" }, 403],
      ["a publisher lists tokens", owner, "GET", "/v1/tokens", undefined, 403]
    ]
    const wrong: Array<string> = []
    for (const [label, token, method, path, body, status] of rows) {
      const answer = await call(token, method, path, body)
      if (answer.status !== status) wrong.push(`${label}: ${answer.status}, expected ${status}`)
      else if (status >= 400) assert.isString(answer.json?.error?.type, label)
    }
    assert.deepStrictEqual(wrong, [])

    // which session serves a row: its owner and admins see it, nobody else
    const sessionOf = async (token: string) =>
      ((await call(token, "GET", "/v1/llms?limit=1000")).json.data as Array<
        { name: string; providerSessionId: string | null }
      >)
        .find((l) => l.name === llm)?.providerSessionId
    assert.strictEqual(await sessionOf(owner), sessionId)
    assert.strictEqual(await sessionOf(admin), sessionId)
    assert.isNull(await sessionOf(otherPublisher))
    assert.isNull(await sessionOf(ownerClient))
  })

  it("GET /v1/llms pages by name with a cursor; a bad cursor or limit is a 400", async () => {
    const p = await broker.token("publisher")
    const prefix = unique("page")
    await register(p, [1, 2, 3, 4, 5].map((i) => ({ name: `${prefix}-${i}` })))
    const seen: Array<string> = []
    let cursor: string | null = null
    let pages = 0
    do {
      const query: string = `/v1/llms?limit=2${cursor === null ? "" : `&cursor=${cursor}`}`
      const page = await call(p, "GET", query)
      assert.strictEqual(page.status, 200)
      assert.isAtMost(page.json.data.length, 2)
      seen.push(...page.json.data.map((l: { name: string }) => l.name))
      cursor = page.json.nextCursor
      pages++
    } while (cursor !== null && pages < 1000)
    assert.deepStrictEqual(seen.filter((name) => name.startsWith(prefix)), [1, 2, 3, 4, 5].map((i) => `${prefix}-${i}`))
    assert.deepStrictEqual(seen, [...seen].sort(), "in name order, none twice")
    assert.strictEqual((await call(p, "GET", "/v1/llms?cursor=%25%25%25")).status, 400)
    assert.strictEqual((await call(p, "GET", "/v1/llms?limit=0")).status, 400)
  })

  it("GET /v1/models/:id is a direct lookup of a row or a pool", async () => {
    const p = await broker.token("publisher")
    const client = await broker.token("client")
    const pool = unique("mpool")
    const name = unique("mrow")
    await register(p, [{ name, pool }])
    const row = await call(client, "GET", `/v1/models/${name}`)
    assert.strictEqual(row.status, 200)
    assert.strictEqual(row.json.id, name)
    const asPool = await call(client, "GET", `/v1/models/${pool}`)
    assert.strictEqual(asPool.status, 200)
    assert.strictEqual(asPool.json.kind, "pool")
    assert.strictEqual((await call(client, "GET", `/v1/models/${unique("none")}`)).status, 404)
  })
})
