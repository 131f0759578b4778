/**
 * Issue 14, critical: one client token could end the broker process. 2,000
 * `/events` readers of one pending task, the task deleted, every connection
 * dropped: each reader's fiber queued for a database connection and gave up,
 * and pg-pool's hand-back through the run of abandoned waiters overflowed the
 * stack (an uncaught RangeError; 4 of 5 runs). A real broker process with a
 * one-connection pool, so the readers queue.
 */
import { Effect, Exit, Scope } from "effect"
import * as Http from "node:http"
import { afterAll, assert, beforeAll, it } from "vitest"
import { freePort } from "../../src/db/Embedded.js"
import { spawnRelay } from "../support/process.js"
import { createDatabase } from "../support/TestDatabase.js"

const scope = Effect.runSync(Scope.make())
let databaseUrl: string
beforeAll(async () => {
  databaseUrl = (await Effect.runPromise(Scope.extend(createDatabase, scope))).url
})
afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

const ADMIN = "a".repeat(40)
const READERS = 2_000

it(`${READERS} /events readers of a deleted task dropping at once do not end the broker`, async () => {
  const port = await Effect.runPromise(freePort)
  const base = `http://127.0.0.1:${port}`
  const serve = spawnRelay(["serve", "--port", String(port)], {
    DATABASE_URL: databaseUrl,
    RELAY_ADMIN_TOKEN: ADMIN,
    RELAY_DB_MAX_CONNECTIONS: "1",
    RELAY_LIMIT_WAITING: String(READERS + 100)
  })
  const agent = new Http.Agent({ keepAlive: false, maxSockets: Infinity })
  try {
    await serve.waitFor(/Listening on/)
    const call = async (method: string, path: string, token: string, body?: unknown) => {
      const response = await fetch(`${base}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) })
      })
      const text = await response.text()
      return { status: response.status, json: text === "" ? undefined : JSON.parse(text) }
    }
    const token = async (role: string) => (await call("POST", "/v1/tokens", ADMIN, { role, name: role })).json.token
    const publisher = await token("publisher")
    const client = await token("client")
    // a provider whose stream never opens: the task stays pending
    const registered = await call("POST", "/v1/publishers/sessions", publisher, {
      providers: [{ name: "quiet", model: "m" }]
    })
    assert.strictEqual(registered.status, 200)
    const created = await call("POST", "/v1/tasks", client, {
      model: "quiet",
      path: "/v1/chat/completions",
      body: { model: "quiet", messages: [{ role: "user", content: "hi" }] }
    })
    assert.strictEqual(created.status, 202, JSON.stringify(created.json))
    const taskId = created.json.id as string

    const requests: Array<Http.ClientRequest> = []
    let opened = 0
    await new Promise<void>((resolve, reject) => {
      for (let i = 0; i < READERS; i++) {
        const request = Http.get(`${base}/v1/tasks/${taskId}/events`, {
          agent,
          headers: { authorization: `Bearer ${client}` }
        }, (response) => {
          response.on("error", () => undefined)
          response.once("data", () => {
            if (++opened === READERS) resolve()
          })
        })
        request.on("error", (e) => (opened < READERS ? reject(e) : undefined))
        requests.push(request)
      }
    })
    // every reader has its first event; now the task goes, and every reader with it
    assert.strictEqual((await call("DELETE", `/v1/tasks/${taskId}`, client)).status, 200)
    for (const request of requests) request.destroy()

    // the overflow came ~8 s after the drop: the broker must still answer well after that
    const deadline = Date.now() + 12_000
    while (Date.now() < deadline) {
      assert.isNull(serve.child.exitCode, `the broker exited:\n${serve.output.slice(-3000)}`)
      const health = await fetch(`${base}/healthz`)
      assert.strictEqual(health.status, 200)
      await new Promise((r) => setTimeout(r, 500))
    }
    assert.notMatch(serve.output, /RangeError|Maximum call stack/)
    // and it still serves work
    const after = await call("GET", `/v1/tasks/${taskId}`, client)
    assert.strictEqual(after.json.status, "cancelled")
  } finally {
    agent.destroy()
    serve.child.kill("SIGTERM")
    await serve.exited
  }
}, 240_000)
