/**
 * The HTTP API end to end: the real server on a random port, real PostgreSQL,
 * the official `openai` SDK as client, and a publisher written from PROTOCOL.md.
 */
import OpenAI from "openai"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { startBroker, type TestBroker } from "../support/broker.js"
import { autoServe, chunk, completion, parseSse, RawPublisher, type SseEvent } from "../support/rawPublisher.js"

let broker: TestBroker
let clientToken: string
let publisherToken: string
let client: OpenAI

beforeAll(async () => {
  broker = await startBroker()
  clientToken = await broker.token("client")
  publisherToken = await broker.token("publisher")
  client = broker.openai(clientToken)
})
afterAll(() => broker?.close())

let counter = 0
const unique = (prefix: string) => `${prefix}-${++counter}-${Math.random().toString(36).slice(2, 6)}`

/** A publisher with one provider, registered and connected. */
const online = async (
  providers: ReadonlyArray<{ name: string; pool?: string; maxConcurrent?: number }>,
  token = publisherToken
) => {
  const publisher = new RawPublisher(broker.url, token)
  const response = await publisher.register(providers)
  assert.strictEqual(response.status, 200, await response.clone().text())
  await publisher.connect()
  return publisher
}

const fetchJson = async (path: string, init: RequestInit & { token?: string } = {}) => {
  const { token, ...rest } = init
  const response = await fetch(`${broker.url}${path}`, {
    ...rest,
    headers: {
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      "content-type": "application/json",
      ...(rest.headers as Record<string, string> | undefined)
    }
  })
  const text = await response.text()
  return { status: response.status, headers: response.headers, body: text.length > 0 ? JSON.parse(text) : null }
}

describe("chat completions through a publisher", () => {
  it("non-streaming: the publisher's status and body come back as they came, with X-Relay-Task-Id", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const stop = autoServe(publisher, async (task) => {
      assert.strictEqual(task.path, "/v1/chat/completions")
      assert.strictEqual(task.llmName, name)
      assert.strictEqual(task.streaming, false)
      assert.strictEqual(task.attempt, 1)
      assert.deepStrictEqual(task.body.messages, [{ role: "user", content: "hi" }])
      await publisher.post(task.taskId, "ack", { attempt: task.attempt })
      await publisher.post(task.taskId, "result", {
        status: 200,
        body: completion("hello there"),
        attempt: task.attempt
      })
    })
    const { data, response } = await client.chat.completions
      .create({ model: name, messages: [{ role: "user", content: "hi" }] })
      .withResponse()
    stop()
    assert.strictEqual(data.choices[0]!.message.content, "hello there")
    assert.match(response.headers.get("x-relay-task-id") ?? "", /.+/)
    publisher.disconnect()
  })

  it("streaming: chunks arrive in order, then [DONE]", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const words = Array.from({ length: 30 }, (_, i) => `w${i} `)
    const stop = autoServe(publisher, async (task) => {
      assert.strictEqual(task.streaming, true)
      for (let i = 0; i < words.length; i += 7) {
        const response = await publisher.post(task.taskId, "chunks", {
          chunks: words.slice(i, i + 7).map((w) => chunk(w)),
          attempt: task.attempt
        })
        assert.strictEqual(response.status, 204)
      }
      await publisher.post(task.taskId, "result", { attempt: task.attempt })
    })
    const stream = await client.chat.completions.create({
      model: name,
      messages: [{ role: "user", content: "count" }],
      stream: true
    })
    const received: Array<string> = []
    for await (const part of stream) received.push(part.choices[0]?.delta?.content ?? "")
    stop()
    assert.deepStrictEqual(received, words)
    publisher.disconnect()
  })

  it("streaming: a chunk spread over several lines (LF or CRLF) reaches the SDK whole; a bodiless result ends it", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const pretty = (content: string, eol: string) =>
      JSON.stringify(JSON.parse(chunk(content)), null, 2).split("\n").join(eol)
    const stop = autoServe(publisher, async (task) => {
      await publisher.post(task.taskId, "chunks", {
        chunks: [pretty("one ", "\n"), pretty("two", "\r\n")],
        attempt: task.attempt
      })
      // a result carrying only its attempt (no status, no body): 200, the stream's end
      const end = await publisher.request(
        "POST",
        `/v1/publishers/sessions/${publisher.sessionId}/tasks/${task.taskId}/result`,
        { attempt: task.attempt }
      )
      assert.strictEqual(end.status, 204, await end.clone().text())
    })
    const stream = await client.chat.completions.create({
      model: name,
      messages: [{ role: "user", content: "x" }],
      stream: true
    })
    const received: Array<string> = []
    for await (const part of stream) received.push(part.choices[0]?.delta?.content ?? "")
    stop()
    assert.deepStrictEqual(received, ["one ", "two"])
    publisher.disconnect()
  })

  it("routes a pool name to any active member", async () => {
    const pool = unique("pool")
    const a = await online([{ name: unique("member"), pool }])
    const b = await online([{ name: unique("member"), pool }])
    const served: Array<string> = []
    const serve = (publisher: RawPublisher) =>
      autoServe(publisher, async (task) => {
        served.push(task.llmName)
        await publisher.post(task.taskId, "result", { body: completion(task.llmName), attempt: task.attempt })
      })
    const stops = [serve(a), serve(b)]
    const answers = await Promise.all(
      Array.from(
        { length: 6 },
        () => client.chat.completions.create({ model: pool, messages: [{ role: "user", content: "x" }] })
      )
    )
    stops.forEach((stop) => stop())
    assert.strictEqual(answers.length, 6)
    assert.strictEqual(served.length, 6)
    const models = await client.models.list()
    const ids = models.data.map((m) => m.id)
    assert.include(ids, pool)
    a.disconnect()
    b.disconnect()
  })

  it("passes an upstream error status through as UpstreamError", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const stop = autoServe(publisher, async (task) => {
      await publisher.post(task.taskId, "error", {
        status: 429,
        message: "upstream says slow down",
        attempt: task.attempt
      })
    })
    const error = await client.chat.completions
      .create({ model: name, messages: [{ role: "user", content: "x" }] })
      .catch((e: unknown) => e)
    stop()
    assert.instanceOf(error, OpenAI.APIError)
    const apiError = error as InstanceType<typeof OpenAI.APIError>
    assert.strictEqual(apiError.status, 429)
    assert.strictEqual(apiError.type, "UpstreamError")
    assert.match(apiError.message, /slow down/)
    publisher.disconnect()
  })
})

describe("errors a client sees", () => {
  it("unknown model: 404 ModelNotFound", async () => {
    const error = (await client.chat.completions
      .create({ model: "no-such-model", messages: [] })
      .catch((e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>
    assert.strictEqual(error.status, 404)
    assert.strictEqual(error.type, "ModelNotFound")
    assert.strictEqual(error.code, "model_not_found")
  })

  it("no active publisher (it said goodbye): 503 PublisherOffline at once, and no task is made", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    assert.strictEqual(
      (await publisher.request("DELETE", `/v1/publishers/sessions/${publisher.sessionId}`)).status,
      204
    )
    await publisher.waitClosed()
    // the stream's close unbinds asynchronously: wait until the row is inactive
    for (let i = 0; i < 50; i++) {
      const llms = await fetchJson("/v1/llms", { token: clientToken })
      if (llms.body.data.find((l: { name: string }) => l.name === name)?.status === "inactive") break
      await new Promise((r) => setTimeout(r, 50))
    }
    const started = performance.now()
    const error = (await client.chat.completions
      .create({ model: name, messages: [] })
      .catch((e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>
    assert.strictEqual(error.status, 503)
    assert.strictEqual(error.type, "PublisherOffline")
    assert.isNull(error.headers?.get?.("x-relay-task-id") ?? null)
    assert.isBelow(performance.now() - started, 5_000)
  })

  it("401 without a token or with an unknown one; 403 for the wrong role", async () => {
    const none = await fetchJson("/v1/models")
    assert.strictEqual(none.status, 401)
    assert.strictEqual(none.body.error.type, "Unauthorized")
    const unknown = await fetchJson("/v1/models", { token: "not-a-token" })
    assert.strictEqual(unknown.status, 401)
    const wrongRole = await fetchJson("/v1/models", { token: publisherToken })
    assert.strictEqual(wrongRole.status, 403)
    assert.strictEqual(wrongRole.body.error.type, "Forbidden")
    const clientRegisters = await fetchJson("/v1/publishers/sessions", {
      method: "POST",
      token: clientToken,
      body: JSON.stringify({ providers: [{ name: "x", model: "m" }] })
    })
    assert.strictEqual(clientRegisters.status, 403)
    const clientMakesTokens = await fetchJson("/v1/tokens", {
      method: "POST",
      token: clientToken,
      body: JSON.stringify({ role: "admin", name: "nope" })
    })
    assert.strictEqual(clientMakesTokens.status, 403)
  })

  it("a publisher cannot touch another principal's session: 403", async () => {
    const publisher = await online([{ name: unique("llm") }])
    const otherToken = await broker.token("publisher")
    const heartbeat = await fetchJson(`/v1/publishers/sessions/${publisher.sessionId}/heartbeat`, {
      method: "POST",
      token: otherToken
    })
    assert.strictEqual(heartbeat.status, 403)
    const hijack = await new RawPublisher(broker.url, otherToken).register(
      [{ name: unique("llm") }],
      publisher.sessionId
    )
    assert.strictEqual(hijack.status, 403)
    publisher.disconnect()
  })

  it("413 for a body over the limit, without a 500", async () => {
    const big = JSON.stringify({ model: "x", messages: [{ role: "user", content: "a".repeat(9 * 1024 * 1024) }] })
    const response = await fetchJson("/v1/chat/completions", { method: "POST", token: clientToken, body: big })
    assert.strictEqual(response.status, 413)
    assert.strictEqual(response.body.error.type, "PayloadTooLarge")
  })

  it("400 naming the problem for malformed JSON and for a missing field", async () => {
    const malformed = await fetchJson("/v1/chat/completions", { method: "POST", token: clientToken, body: "{not json" })
    assert.strictEqual(malformed.status, 400)
    assert.strictEqual(malformed.body.error.type, "BadRequest")
    assert.match(malformed.body.error.message, /JSON/)
    const missing = await fetchJson("/v1/chat/completions", { method: "POST", token: clientToken, body: "{}" })
    assert.strictEqual(missing.status, 400)
    assert.match(missing.body.error.message, /model/)
    const badProvider = await fetchJson("/v1/publishers/sessions", {
      method: "POST",
      token: publisherToken,
      body: JSON.stringify({ providers: [{ name: "bad name!", model: "m" }] })
    })
    assert.strictEqual(badProvider.status, 400)
    assert.match(badProvider.body.error.message, /providers\[0\]\.name/)
  })

  it("a NUL character (which PostgreSQL cannot store) in a body: 400, nothing stored", async () => {
    const name = unique("llm")
    const publisher = new RawPublisher(broker.url, publisherToken)
    await publisher.register([{ name }])
    const agentId = unique("agent-nul")
    const created = await fetchJson("/v1/tasks", {
      method: "POST",
      token: clientToken,
      body: JSON.stringify({
        model: name,
        agentId,
        body: { model: name, messages: [{ role: "user", content: "a\u0000b" }] }
      })
    })
    assert.strictEqual(created.status, 400)
    assert.strictEqual(created.body.error.type, "BadRequest")
    assert.match(created.body.error.message, /NUL/)
    const listed = await fetchJson(`/v1/tasks?agentId=${agentId}`, { token: clientToken })
    assert.strictEqual(listed.status, 200)
    assert.strictEqual(listed.body.data.length, 0)
  })

  it("an unknown route is a 404 in the same shape", async () => {
    const response = await fetchJson("/v1/nope", { token: clientToken })
    assert.strictEqual(response.status, 404)
    assert.isString(response.body.error.message)
  })
})

describe("publisher sessions", () => {
  it("a name another session holds active: 409 NameConflict, nothing written", async () => {
    const name = unique("llm")
    const first = await online([{ name }])
    const other = new RawPublisher(broker.url, publisherToken)
    const fresh = unique("fresh")
    const response = await other.register([{ name: fresh }, { name }])
    assert.strictEqual(response.status, 409)
    const body = (await response.json()) as { error: { type: string } }
    assert.strictEqual(body.error.type, "NameConflict")
    const llms = await fetchJson("/v1/llms", { token: clientToken })
    assert.isUndefined(llms.body.data.find((l: { name: string }) => l.name === fresh))
    first.disconnect()
  })

  it("re-registering with the sticky sessionId keeps the rows' ids", async () => {
    const name = unique("llm")
    const publisher = new RawPublisher(broker.url, publisherToken)
    const first = (await (await publisher.register([{ name }])).json()) as {
      sessionId: string
      llms: Array<{ id: string }>
    }
    const again = (await (await publisher.register([{ name, maxConcurrent: 2 }], first.sessionId)).json()) as {
      sessionId: string
      llms: Array<{ id: string; maxConcurrent: number }>
    }
    assert.strictEqual(again.sessionId, first.sessionId)
    assert.strictEqual(again.llms[0]!.id, first.llms[0]!.id)
    assert.strictEqual(again.llms[0]!.maxConcurrent, 2)
  })

  it("client abort: the holder gets a cancel frame, and a later post is 410 TaskCancelled", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const controller = new AbortController()
    const call = client.chat.completions
      .create({ model: name, messages: [{ role: "user", content: "long" }] }, { signal: controller.signal })
      .catch((e: unknown) => e)
    const task = await publisher.nextTask()
    await publisher.post(task.taskId, "ack", { attempt: task.attempt })
    controller.abort()
    await call
    const cancel = await publisher.next((f) => f.event === "cancel")
    assert.strictEqual(JSON.parse(cancel.data).taskId, task.taskId)
    const late = await publisher.post(task.taskId, "result", { body: completion("late"), attempt: task.attempt })
    assert.strictEqual(late.status, 410)
    assert.strictEqual(((await late.json()) as { error: { type: string } }).error.type, "TaskCancelled")
    publisher.disconnect()
  })

  it("the holder's stream drops: the task goes to another pool member; the dropped session's late post is 409", async () => {
    const pool = unique("pool")
    const first = await online([{ name: unique("m"), pool }])
    const call = client.chat.completions.create({ model: pool, messages: [{ role: "user", content: "x" }] })
    const task = await first.nextTask()
    first.disconnect()
    await first.waitClosed()
    const second = await online([{ name: unique("m"), pool }])
    const redispatched = await second.nextTask()
    assert.strictEqual(redispatched.taskId, task.taskId)
    assert.strictEqual(redispatched.attempt, 2)
    const late = await first.post(task.taskId, "result", { body: completion("stale"), attempt: task.attempt })
    assert.strictEqual(late.status, 409)
    assert.strictEqual(((await late.json()) as { error: { type: string } }).error.type, "TaskNotHeld")
    await second.post(redispatched.taskId, "result", { body: completion("fresh"), attempt: redispatched.attempt })
    const answer = await call
    assert.strictEqual(answer.choices[0]!.message.content, "fresh")
    second.disconnect()
  })

  it("a row with maxConcurrent 2 never holds more than 2 tasks under 20 concurrent calls", async () => {
    const name = unique("llm")
    const publisher = await online([{ name, maxConcurrent: 2 }])
    let inFlight = 0
    let maxInFlight = 0
    const stop = autoServe(publisher, async (task) => {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      await new Promise((r) => setTimeout(r, 20))
      inFlight--
      await publisher.post(task.taskId, "result", { body: completion("ok"), attempt: task.attempt })
    })
    const answers = await Promise.all(
      Array.from(
        { length: 20 },
        () => client.chat.completions.create({ model: name, messages: [{ role: "user", content: "x" }] })
      )
    )
    stop()
    assert.strictEqual(answers.length, 20)
    assert.strictEqual(maxInFlight, 2)
    publisher.disconnect()
  })

  it("DELETE session says goodbye: rows inactive and the stream closes", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const response = await publisher.request("DELETE", `/v1/publishers/sessions/${publisher.sessionId}`)
    assert.strictEqual(response.status, 204)
    await publisher.waitClosed()
    const llms = await fetchJson("/v1/llms", { token: clientToken })
    assert.strictEqual(llms.body.data.find((l: { name: string }) => l.name === name).status, "inactive")
  })
})

describe("async task API", () => {
  it("a task queued with no publisher online waits until one comes, then completes", async () => {
    const name = unique("llm")
    const publisher = new RawPublisher(broker.url, publisherToken)
    await publisher.register([{ name }])
    await publisher.request("DELETE", `/v1/publishers/sessions/${publisher.sessionId}`)
    const created = await fetchJson("/v1/tasks", {
      method: "POST",
      token: clientToken,
      body: JSON.stringify({ model: name, body: { model: name, messages: [{ role: "user", content: "later" }] } })
    })
    assert.strictEqual(created.status, 202)
    assert.strictEqual(created.body.status, "pending")
    const waiting = fetchJson(`/v1/tasks/${created.body.id}/wait?timeoutMs=20000`, { token: clientToken })
    await publisher.register([{ name }])
    await publisher.connect()
    const task = await publisher.nextTask()
    assert.strictEqual(task.taskId, created.body.id)
    await publisher.post(task.taskId, "result", { body: completion("done later"), attempt: task.attempt })
    const done = await waiting
    assert.strictEqual(done.status, 200)
    assert.strictEqual(done.body.status, "completed")
    assert.strictEqual(done.body.responseBody.choices[0].message.content, "done later")
    publisher.disconnect()
  })

  it("owners are isolated: another client's task is a 404, admin sees it", async () => {
    const otherToken = await broker.token("client")
    const created = await fetchJson("/v1/tasks", {
      method: "POST",
      token: clientToken,
      body: JSON.stringify({ model: unique("nothing-serves"), body: {} })
    })
    // the model does not exist: that is a 404 too; use a real row instead
    const name = unique("llm")
    const publisher = new RawPublisher(broker.url, publisherToken)
    await publisher.register([{ name }])
    const mine = await fetchJson("/v1/tasks", {
      method: "POST",
      token: clientToken,
      body: JSON.stringify({ model: name, body: { messages: [] }, agentId: "agent-7" })
    })
    assert.strictEqual(created.status, 404)
    assert.strictEqual(mine.status, 202)
    const theirs = await fetchJson(`/v1/tasks/${mine.body.id}`, { token: otherToken })
    assert.strictEqual(theirs.status, 404)
    assert.strictEqual(theirs.body.error.type, "TaskNotFound")
    const cancelTheirs = await fetchJson(`/v1/tasks/${mine.body.id}`, { method: "DELETE", token: otherToken })
    assert.strictEqual(cancelTheirs.status, 404)
    const admin = await fetchJson(`/v1/tasks/${mine.body.id}`, { token: broker.adminToken })
    assert.strictEqual(admin.status, 200)
    const theirList = await fetchJson("/v1/tasks", { token: otherToken })
    assert.strictEqual(theirList.body.data.length, 0)
    const myList = await fetchJson("/v1/tasks?agentId=agent-7", { token: clientToken })
    assert.deepStrictEqual(myList.body.data.map((t: { id: string }) => t.id), [mine.body.id])
    const cancelled = await fetchJson(`/v1/tasks/${mine.body.id}`, { method: "DELETE", token: clientToken })
    assert.strictEqual(cancelled.status, 200)
    assert.strictEqual(cancelled.body.status, "cancelled")
    const again = await fetchJson(`/v1/tasks/${mine.body.id}`, { method: "DELETE", token: clientToken })
    assert.strictEqual(again.status, 200)
    assert.strictEqual(again.body.status, "cancelled")
  })
})

describe("relay headers and task streams", () => {
  it("X-Relay-Max-Wait: the call waits queued and is served by a publisher that comes online", async () => {
    const name = unique("late")
    const publisher = new RawPublisher(broker.url, publisherToken)
    await publisher.register([{ name }])
    await publisher.request("DELETE", `/v1/publishers/sessions/${publisher.sessionId}`)
    const call = client.chat.completions.create(
      { model: name, messages: [{ role: "user", content: "wait for me" }] },
      { headers: { "X-Relay-Max-Wait": "10" } }
    )
    await new Promise((r) => setTimeout(r, 300))
    await publisher.register([{ name }])
    await publisher.connect()
    const stop = autoServe(
      publisher,
      (task) => publisher.post(task.taskId, "result", { body: completion("served late"), attempt: task.attempt })
    )
    const answer = await call
    stop()
    publisher.disconnect()
    assert.strictEqual(answer.choices[0]!.message.content, "served late")
  })

  it("X-Relay-Max-Wait running out with nobody online: 503 PublisherOffline, the task cancelled", async () => {
    const name = unique("never")
    const publisher = new RawPublisher(broker.url, publisherToken)
    await publisher.register([{ name }])
    await publisher.request("DELETE", `/v1/publishers/sessions/${publisher.sessionId}`)
    const response = await fetch(`${broker.url}/v1/chat/completions`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${clientToken}`,
        "content-type": "application/json",
        "x-relay-max-wait": "0.3"
      },
      body: JSON.stringify({ model: name, messages: [{ role: "user", content: "anyone?" }] })
    })
    assert.strictEqual(response.status, 503)
    assert.strictEqual(((await response.json()) as { error: { type: string } }).error.type, "PublisherOffline")
    const taskId = response.headers.get("x-relay-task-id")
    assert.isString(taskId)
    const task = await fetchJson(`/v1/tasks/${taskId}`, { token: clientToken })
    assert.strictEqual(task.body.status, "cancelled")
  })

  it("a bad relay header is a 400 naming it, and makes no task", async () => {
    const name = unique("strict")
    const publisher = await online([{ name }])
    const response = await fetch(`${broker.url}/v1/chat/completions`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${clientToken}`,
        "content-type": "application/json",
        "x-relay-timeout": "soon"
      },
      body: JSON.stringify({ model: name, messages: [] })
    })
    assert.strictEqual(response.status, 400)
    assert.include(((await response.json()) as { error: { message: string } }).error.message, "X-Relay-Timeout")
    assert.isNull(response.headers.get("x-relay-task-id"))
    publisher.disconnect()
  })

  it("X-Relay-Timeout: 504 Timeout when the publisher is too slow, the task cancelled and the holder told", async () => {
    const name = unique("slowpoke")
    const publisher = await online([{ name }])
    const response = await fetch(`${broker.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${clientToken}`, "content-type": "application/json", "x-relay-timeout": "0.5" },
      body: JSON.stringify({ model: name, messages: [{ role: "user", content: "take your time" }] })
    })
    assert.strictEqual(response.status, 504)
    assert.strictEqual(((await response.json()) as { error: { type: string } }).error.type, "Timeout")
    const task = await publisher.nextTask()
    await publisher.until(() => publisher.cancels().find((c) => c.taskId === task.taskId), "the cancel frame")
    const late = await publisher.post(task.taskId, "result", { body: completion("too late"), attempt: task.attempt })
    assert.strictEqual(late.status, 410)
    publisher.disconnect()
  })

  it("GET /v1/tasks/:id/events streams status, the chunks in order, then done", async () => {
    const name = unique("evented")
    const publisher = await online([{ name }])
    const created = await fetchJson("/v1/tasks", {
      method: "POST",
      token: clientToken,
      body: JSON.stringify({ model: name, body: { model: name, stream: true, messages: [] } })
    })
    const task = await publisher.nextTask()
    // two batches before the client attaches (replayed), one after
    await publisher.post(task.taskId, "chunks", { chunks: [chunk("a"), chunk("b")], attempt: task.attempt })
    await publisher.post(task.taskId, "chunks", { chunks: [chunk("c")], attempt: task.attempt })
    const response = await fetch(`${broker.url}/v1/tasks/${created.body.id}/events`, {
      headers: { authorization: `Bearer ${clientToken}` }
    })
    assert.strictEqual(response.status, 200)
    const events: Array<SseEvent> = []
    const reading = (async () => {
      for await (const event of parseSse(response.body!)) {
        events.push(event)
        if (event.event === "done") return
      }
    })()
    await new Promise((r) => setTimeout(r, 200))
    await publisher.post(task.taskId, "chunks", { chunks: [chunk("d")], attempt: task.attempt })
    await publisher.post(task.taskId, "result", { attempt: task.attempt })
    await reading
    publisher.disconnect()
    assert.strictEqual(events[0]!.event, "status")
    const contents = events.filter((e) => e.event === "chunk").map((e) => JSON.parse(e.data).choices[0].delta.content)
    assert.deepStrictEqual(contents, ["a", "b", "c", "d"])
    const done = JSON.parse(events[events.length - 1]!.data)
    assert.strictEqual(done.status, "completed")
  })
})

describe("tokens and ops", () => {
  it("tokens are shown once, listed without secrets, and revocable", async () => {
    const created = await fetchJson("/v1/tokens", {
      method: "POST",
      token: broker.adminToken,
      body: JSON.stringify({ role: "client", name: "ci" })
    })
    assert.strictEqual(created.status, 201)
    assert.isAtLeast(created.body.token.length, 43)
    assert.deepStrictEqual(Object.keys(created.body), ["id", "name", "role", "principalId", "token"])
    assert.match(created.body.principalId, /^prn_/)
    const list = await fetchJson("/v1/tokens", { token: broker.adminToken })
    const listed = list.body.data.find((t: { id: string }) => t.id === created.body.id)
    assert.deepInclude(listed, { name: "ci", role: "client", principalId: created.body.principalId, revokedAt: null })
    assert.notInclude(JSON.stringify(list.body), created.body.token)
    const works = await fetchJson("/v1/models", { token: created.body.token })
    assert.strictEqual(works.status, 200)
    const revoked = await fetch(`${broker.url}/v1/tokens/${created.body.id}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${broker.adminToken}` }
    })
    assert.strictEqual(revoked.status, 204)
    const after = await fetchJson("/v1/models", { token: created.body.token })
    assert.strictEqual(after.status, 401)
  })

  it("principalId: one no token has is 400 naming it, so is a malformed one, and no token is made", async () => {
    const before = (await fetchJson("/v1/tokens", { token: broker.adminToken })).body.data.length
    const cases: ReadonlyArray<[string, RegExp]> = [
      ["prn_nobody", /^principalId: no token belongs to principal 'prn_nobody'/],
      ["no spaces", /^principalId: must be 1-128 characters/],
      ["p".repeat(300), /^principalId: must be 1-128 characters/],
      ["", /^principalId: must be 1-128 characters/]
    ]
    for (const [principalId, message] of cases) {
      const created = await fetchJson("/v1/tokens", {
        method: "POST",
        token: broker.adminToken,
        body: JSON.stringify({ role: "client", name: "stray", principalId })
      })
      assert.strictEqual(created.status, 400, principalId)
      assert.strictEqual(created.body.error.type, "BadRequest")
      assert.match(created.body.error.message, message)
      assert.notInclude(created.body.error.message, "p".repeat(201), "quotes at most 200 characters")
    }
    assert.strictEqual((await fetchJson("/v1/tokens", { token: broker.adminToken })).body.data.length, before)
  })

  it("healthz, readyz and metrics need no token; openapi.json describes the API", async () => {
    assert.deepStrictEqual((await fetchJson("/healthz")).body, { status: "ok" })
    assert.strictEqual((await fetchJson("/readyz")).status, 200)
    const metrics = await fetch(`${broker.url}/metrics`)
    assert.strictEqual(metrics.status, 200)
    assert.match(await metrics.text(), /llm_relay_llms/)
    const spec = await fetchJson("/openapi.json")
    assert.isDefined(spec.body.paths["/v1/chat/completions"])
  })
})

describe("principals: rotating a token loses nothing", () => {
  const issue = async (role: string, principalId?: string) => {
    const created = await fetchJson("/v1/tokens", {
      method: "POST",
      token: broker.adminToken,
      body: JSON.stringify({ role, name: unique(role), ...(principalId === undefined ? {} : { principalId }) })
    })
    assert.strictEqual(created.status, 201, JSON.stringify(created.body))
    return created.body as { id: string; principalId: string; token: string }
  }
  const revoke = async (id: string) => {
    const response = await fetch(`${broker.url}/v1/tokens/${id}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${broker.adminToken}` }
    })
    assert.strictEqual(response.status, 204)
  }

  it("a client's new token sees the tasks of the revoked one; another principal's token gets 404", async () => {
    const name = unique("llm")
    await new RawPublisher(broker.url, publisherToken).register([{ name }])
    const t1 = await issue("client")
    const agentId = unique("agent")
    const task = await fetchJson("/v1/tasks", {
      method: "POST",
      token: t1.token,
      body: JSON.stringify({ model: name, body: { messages: [] }, agentId })
    })
    assert.strictEqual(task.status, 202)

    const t2 = await issue("client", t1.principalId)
    assert.strictEqual(t2.principalId, t1.principalId)
    await revoke(t1.id)
    assert.strictEqual((await fetchJson(`/v1/tasks/${task.body.id}`, { token: t1.token })).status, 401)
    const seen = await fetchJson(`/v1/tasks/${task.body.id}`, { token: t2.token })
    assert.strictEqual(seen.status, 200, JSON.stringify(seen.body))
    const listed = await fetchJson(`/v1/tasks?agentId=${agentId}`, { token: t2.token })
    assert.deepStrictEqual(listed.body.data.map((t: { id: string }) => t.id), [task.body.id])

    const stranger = await issue("client")
    assert.strictEqual((await fetchJson(`/v1/tasks/${task.body.id}`, { token: stranger.token })).status, 404)
    const theirs = await fetchJson(`/v1/tasks?agentId=${agentId}`, { token: stranger.token })
    assert.deepStrictEqual(theirs.body.data, [])
    const cancelled = await fetchJson(`/v1/tasks/${task.body.id}`, { method: "DELETE", token: t2.token })
    assert.strictEqual(cancelled.body.status, "cancelled")
  })

  it("a publisher's new token takes over the session the revoked one registered; another principal's gets 403", async () => {
    const t1 = await issue("publisher")
    const name = unique("llm")
    const first = await online([{ name }], t1.token)
    const sessionId = first.sessionId!
    const t2 = await issue("publisher", t1.principalId)
    await revoke(t1.id)
    await first.waitClosed(5_000)

    const stranger = new RawPublisher(broker.url, (await issue("publisher")).token)
    assert.strictEqual((await stranger.register([{ name }], sessionId)).status, 403)

    const second = new RawPublisher(broker.url, t2.token)
    const again = await second.register([{ name }], sessionId)
    assert.strictEqual(again.status, 200, await again.clone().text())
    assert.strictEqual(second.sessionId, sessionId)
    await second.connect()
    const heartbeat = await second.request("POST", `/v1/publishers/sessions/${sessionId}/heartbeat`, {})
    assert.strictEqual(heartbeat.status, 200)
    const strangerBeat = await stranger.request("POST", `/v1/publishers/sessions/${sessionId}/heartbeat`, {})
    assert.strictEqual(strangerBeat.status, 403)

    const stop = autoServe(second, async (task) => {
      await second.post(task.taskId, "result", { status: 200, body: completion("served by t2"), attempt: task.attempt })
    })
    const answer = await client.chat.completions.create({ model: name, messages: [{ role: "user", content: "hi" }] })
    stop()
    assert.strictEqual(answer.choices[0]!.message.content, "served by t2")
    second.disconnect()
  })
})
