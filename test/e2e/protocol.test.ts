/**
 * PROTOCOL.md's finer points end to end, on a broker of their own whose
 * sweep and keepalives are short (every 100 ms, every 200 ms), with the
 * official `openai` SDK and a raw publisher as clients. The running-timeout
 * test has a broker of its own (300 ms), so no other task here can run into it.
 */
import { Duration } from "effect"
import * as Http from "node:http"
import OpenAI from "openai"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { startBroker, type TestBroker } from "../support/broker.js"
import { startFakeUpstream } from "../support/fakeUpstream.js"
import { chunk, completion, parseSse, RawPublisher, type SseEvent } from "../support/rawPublisher.js"

let broker: TestBroker
let clientToken: string
let publisherToken: string

beforeAll(async () => {
  broker = await startBroker({
    sweepInterval: Duration.millis(100),
    keepaliveInterval: Duration.millis(200)
  })
  clientToken = await broker.token("client")
  publisherToken = await broker.token("publisher")
})
afterAll(() => broker?.close())

let counter = 0
const unique = (prefix: string) => `${prefix}-${++counter}-${Math.random().toString(36).slice(2, 6)}`

const online = async (providers: ReadonlyArray<{ name: string; pool?: string }>) => {
  const publisher = new RawPublisher(broker.url, publisherToken)
  const response = await publisher.register(providers)
  assert.strictEqual(response.status, 200, await response.clone().text())
  await publisher.connect()
  return publisher
}

const call = async (path: string, init: RequestInit & { token?: string; raw?: string } = {}) => {
  const { token, raw, ...rest } = init
  const response = await fetch(`${broker.url}${path}`, {
    ...rest,
    ...(raw !== undefined ? { body: raw } : {}),
    headers: {
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      "content-type": "application/json"
    }
  })
  const text = await response.text()
  return { status: response.status, headers: response.headers, body: text.length > 0 ? JSON.parse(text) : null }
}

const createTask = (model: string, body: Record<string, unknown> = { messages: [] }) =>
  call("/v1/tasks", { method: "POST", token: clientToken, raw: JSON.stringify({ model, body: { model, ...body } }) })

describe("async tasks", () => {
  it("POST /v1/tasks names the task in X-Relay-Task-Id", async () => {
    const name = unique("llm")
    await new RawPublisher(broker.url, publisherToken).register([{ name }])
    const created = await createTask(name)
    assert.strictEqual(created.status, 202)
    assert.strictEqual(created.headers.get("x-relay-task-id"), created.body.id)
  })

  it("/wait answers 200 with the Task for a task that ended in its own running Timeout; 504 only when the wait runs out", async () => {
    // a broker of its own whose running timeout is 300 ms: on the shared one, every
    // task that runs longer (a loaded machine) would end in that timeout
    const hasty = await startBroker({ runningTimeout: Duration.millis(300), sweepInterval: Duration.millis(100) })
    try {
      const client = await hasty.token("client")
      const publisher = new RawPublisher(hasty.url, await hasty.token("publisher"))
      const name = unique("llm")
      assert.strictEqual((await publisher.register([{ name }])).status, 200)
      await publisher.connect()
      const hung = await fetch(`${hasty.url}/v1/tasks`, {
        method: "POST",
        headers: { authorization: `Bearer ${client}`, "content-type": "application/json" },
        body: JSON.stringify({ model: name, body: { model: name, messages: [] } })
      }).then((r) => r.json() as Promise<{ id: string }>)
      const task = await publisher.nextTask()
      await publisher.post(task.taskId, "ack", { attempt: task.attempt })
      // the holder never answers: the sweep ends the task error Timeout after 300 ms
      const waited = await fetch(`${hasty.url}/v1/tasks/${hung.id}/wait?timeoutMs=10000`, {
        headers: { authorization: `Bearer ${client}` }
      })
      const body = (await waited.json()) as { id: string; status: string }
      assert.strictEqual(waited.status, 200, JSON.stringify(body))
      assert.strictEqual(body.status, "error")
      assert.strictEqual(body.id, hung.id)
      await publisher.next((f) => f.event === "cancel" && JSON.parse(f.data).taskId === task.taskId)
      publisher.disconnect()
    } finally {
      await hasty.close()
    }

    const nobody = unique("llm")
    await new RawPublisher(broker.url, publisherToken).register([{ name: nobody }])
    const queued = await createTask(nobody)
    const ranOut = await call(`/v1/tasks/${queued.body.id}/wait?timeoutMs=200`, { token: clientToken })
    assert.strictEqual(ranOut.status, 504)
    assert.strictEqual(ranOut.body.error.type, "Timeout")
    assert.strictEqual((await call(`/v1/tasks/${queued.body.id}`, { token: clientToken })).body.status, "pending")
  })

  it("empty list parameters count as absent", async () => {
    const name = unique("llm")
    await new RawPublisher(broker.url, publisherToken).register([{ name }])
    const created = await createTask(name)
    const listed = await call("/v1/tasks?status=&agentId=&limit=&cursor=", { token: clientToken })
    assert.strictEqual(listed.status, 200, JSON.stringify(listed.body))
    assert.strictEqual(listed.body.data[0].id, created.body.id, "newest first")
    const bad = await call("/v1/tasks?status=nonsense", { token: clientToken })
    assert.strictEqual(bad.status, 400)
  })

  it("/events sends a status event at each move (a redispatch too), keepalives while quiet, then chunks and done", async () => {
    const name = unique("llm")
    const registering = new RawPublisher(broker.url, publisherToken)
    await registering.register([{ name }])
    const created = await createTask(name, { stream: true })
    const response = await fetch(`${broker.url}/v1/tasks/${created.body.id}/events`, {
      headers: { authorization: `Bearer ${clientToken}` }
    })
    const events: Array<SseEvent> = []
    let notify = () => {}
    const reading = (async () => {
      for await (const event of parseSse(response.body!)) {
        events.push(event)
        notify()
        if (event.event === "done") return
      }
    })()
    const statuses = () =>
      events.filter((e) => e.event === "status").map((e) =>
        `${JSON.parse(e.data).status}#${JSON.parse(e.data).attempts}`
      )
    const until = async (what: () => boolean) => {
      for (let i = 0; i < 100 && !what(); i++) {
        await new Promise<void>((r) => {
          notify = r
          setTimeout(r, 100)
        })
      }
    }
    await until(() => events.some((e) => e.event === ":")) // the broker's keepalive is 200 ms here
    await registering.connect()
    const first = await registering.nextTask()
    await until(() => statuses().length >= 2)
    registering.disconnect() // no output yet: the task goes back to pending
    await registering.waitClosed()
    await until(() => statuses().length >= 3)
    const second = await online([{ name }])
    const task = await second.nextTask()
    assert.deepStrictEqual([task.taskId, task.attempt], [first.taskId, 2])
    await until(() => statuses().length >= 4)
    await second.post(task.taskId, "ack", { attempt: task.attempt })
    await until(() => statuses().length >= 5)
    await second.post(task.taskId, "chunks", { chunks: [chunk("x")], attempt: task.attempt })
    await second.post(task.taskId, "result", { attempt: task.attempt })
    await reading
    second.disconnect()
    assert.deepStrictEqual(statuses(), ["pending#0", "claimed#1", "pending#1", "claimed#2", "running#2"])
    assert.isTrue(events.some((e) => e.event === ":"), "keepalive comments while nothing happens")
    assert.deepStrictEqual(
      events.filter((e) => e.event === "chunk").map((e) => JSON.parse(e.data).choices[0].delta.content),
      ["x"]
    )
    assert.strictEqual(JSON.parse(events[events.length - 1]!.data).status, "completed")
  })
})

describe("publisher posts", () => {
  it("a 128-character session id works on every session route", async () => {
    const sessionId = `${unique("s")}-`.padEnd(128, "s")
    const publisher = new RawPublisher(broker.url, publisherToken)
    const registered = await publisher.register([{ name: unique("llm") }], sessionId)
    assert.strictEqual(registered.status, 200, await registered.clone().text())
    const beat = await publisher.request("POST", `/v1/publishers/sessions/${sessionId}/heartbeat`)
    assert.strictEqual(beat.status, 200, await beat.clone().text())
    await publisher.connect()
    const bye = await publisher.request("DELETE", `/v1/publishers/sessions/${sessionId}`)
    assert.strictEqual(bye.status, 204)
  })

  it("a heartbeat body reports provider health: the row shows healthy:false and takes no task; no body changes nothing", async () => {
    const [sick, well] = [unique("sick"), unique("well")]
    const publisher = await online([{ name: sick }, { name: well }])
    const beat = (body?: unknown) =>
      publisher.request("POST", `/v1/publishers/sessions/${publisher.sessionId}/heartbeat`, body)
    const health = async () => {
      const rows = (await call("/v1/llms?limit=500", { token: publisherToken })).body.data as Array<
        { name: string; healthy: boolean; status: string }
      >
      return Object.fromEntries(rows.filter((r) => r.name === sick || r.name === well).map((r) => [r.name, r.healthy]))
    }
    const report = {
      providers: { [sick]: { healthy: false, reason: "ECONNREFUSED 127.0.0.1:1" }, other: { healthy: true } }
    }
    assert.strictEqual((await beat(report)).status, 200)
    assert.deepStrictEqual(await health(), { [sick]: false, [well]: true })
    assert.strictEqual((await beat()).status, 200, "no body: the old heartbeat")
    assert.strictEqual((await beat({})).status, 200)
    assert.deepStrictEqual(await health(), { [sick]: false, [well]: true }, "absent: unchanged")
    const bad = await beat({ providers: { [sick]: { healthy: "no" } } })
    assert.strictEqual(bad.status, 400)
    assert.match(((await bad.json()) as { error: { message: string } }).error.message, /healthy/)
    // an async task for the unhealthy row waits; healthy again, it is dispatched
    const created = await createTask(sick)
    assert.strictEqual((await beat({ providers: { [sick]: { healthy: true } } })).status, 200)
    const task = await publisher.nextTask()
    assert.strictEqual(task.taskId, created.body.id)
    assert.deepStrictEqual(await health(), { [sick]: true, [well]: true })
    publisher.disconnect()
  })

  it("POST error with retry:true hands the task back: dispatched again with the next attempt", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const created = await createTask(name)
    const first = await publisher.nextTask()
    const handedBack = await publisher.post(first.taskId, "error", {
      message: "ECONNREFUSED",
      retry: true,
      attempt: first.attempt
    })
    assert.strictEqual(handedBack.status, 204)
    const second = await publisher.nextTask(10_000, 1)
    assert.deepStrictEqual([second.taskId, second.attempt], [created.body.id, first.attempt + 1])
    const task = await call(`/v1/tasks/${created.body.id}`, { token: clientToken })
    assert.deepStrictEqual([task.body.status, task.body.attempts], ["claimed", 2])
    publisher.disconnect()
  })

  it("every post must carry the frame's attempt: without it 400 BadRequest naming attempt, and the task is untouched", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const created = await createTask(name)
    const task = await publisher.nextTask()
    const bodies = {
      ack: undefined,
      chunks: { chunks: [chunk("x")] },
      result: { body: completion("taken for the current attempt") },
      error: { message: "upstream broke" }
    } as const
    for (const [what, body] of Object.entries(bodies)) {
      const post = await publisher.request(
        "POST",
        `/v1/publishers/sessions/${publisher.sessionId}/tasks/${task.taskId}/${what}`,
        body
      )
      assert.strictEqual(post.status, 400, what)
      const wire = (await post.json()) as { error: { type: string; message: string } }
      assert.strictEqual(wire.error.type, "BadRequest", what)
      assert.match(wire.error.message, /attempt/, what)
    }
    const still = await call(`/v1/tasks/${created.body.id}`, { token: clientToken })
    assert.deepStrictEqual([still.body.status, still.body.responseBody], ["claimed", null])
    // with it, the same post is taken
    assert.strictEqual(
      (await publisher.post(task.taskId, "result", { body: completion("ok"), attempt: task.attempt })).status,
      204
    )
    publisher.disconnect()
  })

  it("a lone surrogate in a publisher's result, chunks or error is stored as U+FFFD: the post is 204 and the client gets its answer", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const client = new OpenAI({ apiKey: clientToken, baseURL: `${broker.url}/v1`, maxRetries: 0 })
    const whole = client.chat.completions.create({ model: name, messages: [] })
    const first = await publisher.nextTask()
    const done = await publisher.post(first.taskId, "result", { status: 200, body: completion("a\ud800b"), attempt: 1 })
    assert.strictEqual(done.status, 204, await done.text())
    assert.strictEqual((await whole).choices[0]!.message.content, "a\ufffdb")

    const streamed = fetch(`${broker.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${clientToken}`, "content-type": "application/json" },
      body: JSON.stringify({ model: name, stream: true, messages: [] })
    })
    const second = await publisher.nextTask(10_000, 1)
    // the chunk's JSON text itself holds the raw lone surrogate (not its escape)
    const chunked = await publisher.post(second.taskId, "chunks", { chunks: ["x\udc00y"], attempt: 1 })
    assert.strictEqual(chunked.status, 204, await chunked.text())
    await publisher.post(second.taskId, "result", { status: 200, attempt: 1 })
    assert.include(await (await streamed).text(), "data: x\ufffdy")

    const failing = client.chat.completions.create({ model: name, messages: [] }).catch((e: unknown) => e)
    const third = await publisher.nextTask(10_000, 2)
    const failed = await publisher.post(third.taskId, "error", {
      status: 502,
      message: "upstream said \ud800",
      body: { error: { message: "\ud800", type: "x" } },
      attempt: 1
    })
    assert.strictEqual(failed.status, 204, await failed.text())
    assert.strictEqual(((await failing) as { status: number }).status, 502)
    publisher.disconnect()
  })

  it("an attempt past int4, a 1xx status, a body with 204: 400 naming the field, and the task is untouched", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const created = await createTask(name)
    const frame = await publisher.nextTask()
    const huge = await publisher.post(frame.taskId, "ack", { attempt: 3_000_000_000 })
    assert.strictEqual(huge.status, 400)
    assert.match(((await huge.json()) as { error: { message: string } }).error.message, /^attempt: /)
    const informational = await publisher.post(frame.taskId, "result", { status: 100, body: {}, attempt: 1 })
    assert.strictEqual(informational.status, 400)
    assert.match(((await informational.json()) as { error: { message: string } }).error.message, /^status: /)
    const noContent = await publisher.post(frame.taskId, "result", { status: 204, body: { x: 1 }, attempt: 1 })
    assert.strictEqual(noContent.status, 400)
    assert.match(((await noContent.json()) as { error: { message: string } }).error.message, /^body: .*204/)
    const task = await call(`/v1/tasks/${created.body.id}`, { token: clientToken })
    assert.strictEqual(task.body.status, "claimed")
    assert.strictEqual((await publisher.post(frame.taskId, "result", { status: 204, attempt: 1 })).status, 204)
    publisher.disconnect()
  })

  it("revoking a publisher's token closes its open stream at once; its held task goes back to the queue; its posts are 401", async () => {
    const created = await call("/v1/tokens", {
      method: "POST",
      token: broker.adminToken,
      raw: JSON.stringify({ role: "publisher", name: unique("revoked") })
    })
    assert.strictEqual(created.status, 201, JSON.stringify(created.body))
    const publisher = new RawPublisher(broker.url, created.body.token)
    const name = unique("llm")
    assert.strictEqual((await publisher.register([{ name }])).status, 200)
    await publisher.connect()
    const task = await createTask(name)
    const frame = await publisher.nextTask()
    const revoked = await call(`/v1/tokens/${created.body.id}`, { method: "DELETE", token: broker.adminToken })
    assert.isBelow(revoked.status, 300, JSON.stringify(revoked.body))
    await publisher.waitClosed(5_000)
    const after = await call(`/v1/tasks/${task.body.id}`, { token: clientToken })
    assert.strictEqual(after.body.status, "pending", "the task is free for another publisher")
    assert.strictEqual((await publisher.post(frame.taskId, "ack", { attempt: frame.attempt })).status, 401)
  })

  it("revoking one token of a principal closes the principal's stream opened with its other token; revoking it again closes nothing", async () => {
    const issue = async (principalId?: string) => {
      const created = await call("/v1/tokens", {
        method: "POST",
        token: broker.adminToken,
        raw: JSON.stringify({ role: "publisher", name: unique("rotated"), ...(principalId ? { principalId } : {}) })
      })
      assert.strictEqual(created.status, 201, JSON.stringify(created.body))
      return created.body as { id: string; principalId: string; token: string }
    }
    const old = await issue()
    const current = await issue(old.principalId)
    const publisher = new RawPublisher(broker.url, current.token)
    const name = unique("llm")
    assert.strictEqual((await publisher.register([{ name }])).status, 200)
    await publisher.connect()
    assert.strictEqual((await call(`/v1/tokens/${old.id}`, { method: "DELETE", token: broker.adminToken })).status, 204)
    await publisher.waitClosed(5_000)

    // the publisher comes back on its other token, same session
    const back = new RawPublisher(broker.url, current.token)
    assert.strictEqual((await back.register([{ name }], publisher.sessionId)).status, 200)
    await back.connect()
    assert.strictEqual((await call(`/v1/tokens/${old.id}`, { method: "DELETE", token: broker.adminToken })).status, 204)
    const task = await createTask(name)
    const frame = await back.nextTask()
    assert.strictEqual(frame.taskId, task.body.id, "the stream stayed open")
    assert.isFalse(back.closed)
    back.disconnect()
  })

  it("a post for a task that has ended is 409 TaskNotHeld", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const created = await createTask(name)
    const task = await publisher.nextTask()
    assert.strictEqual(task.taskId, created.body.id)
    const failed = await publisher.post(task.taskId, "error", {
      message: "upstream broke",
      status: 500,
      attempt: task.attempt
    })
    assert.strictEqual(failed.status, 204)
    for (const what of ["chunks", "result", "ack"] as const) {
      const late = await publisher.post(task.taskId, what, { chunks: [chunk("late")], attempt: task.attempt })
      assert.strictEqual(late.status, 409, what)
      const body = (await late.json()) as { error: { type: string; code: string } }
      assert.deepStrictEqual([body.error.type, body.error.code], ["TaskNotHeld", "task_not_held"], what)
    }
    publisher.disconnect()
  })

  it("a non-streaming task finished without a body is a 502 UpstreamError for the client, not an empty 200", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const client = broker.openai(clientToken)
    const answer = client.chat.completions.create({ model: name, messages: [{ role: "user", content: "hi" }] }).catch((
      e: unknown
    ) => e)
    const task = await publisher.nextTask()
    assert.strictEqual((await publisher.post(task.taskId, "result", { attempt: task.attempt })).status, 204)
    const failure = await answer
    assert.instanceOf(failure, OpenAI.APIError)
    assert.strictEqual((failure as InstanceType<typeof OpenAI.APIError>).status, 502)
    assert.strictEqual((failure as InstanceType<typeof OpenAI.APIError>).type, "UpstreamError")
    publisher.disconnect()
  })

  it("a provider added by re-registering while the stream is open gets its tasks without waiting for a poll", async () => {
    const first = unique("llm")
    const added = unique("llm")
    const publisher = await online([{ name: first }])
    const again = await publisher.register([{ name: first }, { name: added }])
    assert.strictEqual(again.status, 200)
    const client = broker.openai(clientToken)
    const answer = client.chat.completions.create({ model: added, messages: [{ role: "user", content: "hi" }] })
    // the session's slow poll is 60 s; the task must come on the new row's signal
    const task = await publisher.nextTask(5_000)
    assert.strictEqual(task.llmName, added)
    await publisher.post(task.taskId, "result", { body: completion("from the new row"), attempt: task.attempt })
    assert.strictEqual((await answer).choices[0]!.message.content, "from the new row")
    publisher.disconnect()
  })
})

describe("queued streams", () => {
  it("a stream still queued after 3 s gets its headers and ': queued' comments; the SDK reads the output that follows", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const client = new OpenAI({ apiKey: clientToken, baseURL: `${broker.url}/v1`, maxRetries: 0 })
    const started = performance.now()
    const { data: stream, response } = await client.chat.completions
      .create({ model: name, messages: [{ role: "user", content: "wait for it" }], stream: true })
      .withResponse()
    // the headers came before any output: the publisher has not even acked
    const headersAfter = performance.now() - started
    assert.isAtLeast(headersAfter, 2_900)
    assert.strictEqual(response.headers.get("content-type"), "text/event-stream")
    const frame = await publisher.nextTask()
    const read = (async () => {
      let text = ""
      for await (const part of stream) text += part.choices[0]?.delta?.content ?? ""
      return text
    })()
    await new Promise((r) => setTimeout(r, 500)) // a few keepalive intervals (200 ms here) of ': queued'
    await publisher.post(frame.taskId, "chunks", { chunks: [chunk("late "), chunk("answer")], attempt: frame.attempt })
    await publisher.post(frame.taskId, "result", { status: 200, attempt: frame.attempt })
    assert.strictEqual(await read, "late answer")
    publisher.disconnect()
  })

  it("on the wire: ': queued' first; an upstream 429 after the headers is the in-band error frame, the status stays 200", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    const response = await fetch(`${broker.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${clientToken}`, "content-type": "application/json" },
      body: JSON.stringify({ model: name, stream: true, messages: [] })
    })
    assert.strictEqual(response.status, 200)
    const events = parseSse(response.body!)
    const first = await events.next()
    assert.strictEqual(first.value?.event, ":")
    assert.include(first.value?.data ?? "", "queued")
    const frame = await publisher.nextTask()
    await publisher.post(frame.taskId, "error", { message: "slow down", status: 429, attempt: frame.attempt })
    let last: SseEvent | undefined
    for await (const event of { [Symbol.asyncIterator]: () => events }) {
      if (event.event !== ":") last = event
    }
    assert.strictEqual(JSON.parse(last!.data).error.type, "UpstreamError")
    publisher.disconnect()
  })
})

describe("roles and the SDK", () => {
  it("a wrong role is 403 before the body is looked at", async () => {
    const adminOnly = await call("/v1/tokens", { method: "POST", token: clientToken, raw: "{}" })
    const publisherOnly = await call("/v1/publishers/sessions", { method: "POST", token: clientToken, raw: "{}" })
    const clientOnly = await call("/v1/chat/completions", { method: "POST", token: publisherToken, raw: "{}" })
    const llmsAdmin = await call("/v1/llms", { method: "POST", token: publisherToken, raw: "not json" })
    for (const answer of [adminOnly, publisherOnly, clientOnly, llmsAdmin]) {
      assert.strictEqual(answer.status, 403, JSON.stringify(answer.body))
      assert.strictEqual(answer.body.error.type, "Forbidden")
    }
    assert.strictEqual((await call("/v1/llms", { token: publisherToken })).status, 200, "any role lists LLMs")
    assert.strictEqual((await call("/v1/llms", { method: "HEAD", token: clientToken })).status, 200, "HEAD as GET")
    // the role follows the route the router matched, however the path is spelled
    const spelled = await call("//v1/%74okens", { method: "POST", token: clientToken, raw: "{}" })
    assert.strictEqual(spelled.status, 403, JSON.stringify(spelled.body))
    assert.strictEqual((await call("/v1/tokens", { method: "POST", token: broker.adminToken, raw: "{}" })).status, 400)
  })

  it("models.retrieve finds a model by name (slashes too, 128 characters too); an unknown one is 404 ModelNotFound", async () => {
    const name = `${unique("org")}/Model-7B`
    const long = `${unique("long")}-`.padEnd(128, "x")
    const publisher = new RawPublisher(broker.url, publisherToken)
    await publisher.register([{ name }, { name: long }])
    const client = broker.openai(clientToken)
    const model = await client.models.retrieve(name)
    assert.strictEqual(model.id, name)
    assert.strictEqual((await client.models.retrieve(long)).id, long)
    assert.strictEqual((model as unknown as { kind: string }).kind, "virtual")
    const missing = await client.models.retrieve(unique("nope")).catch((e: unknown) => e)
    assert.instanceOf(missing, OpenAI.NotFoundError)
    assert.strictEqual((missing as InstanceType<typeof OpenAI.NotFoundError>).type, "ModelNotFound")
  })

  it("the SDK does not retry a relay Timeout on its own: one task, one cancel", async () => {
    const name = unique("llm")
    const publisher = await online([{ name }])
    // default retries (2): x-should-retry: false must stop them
    const client = new OpenAI({ apiKey: clientToken, baseURL: `${broker.url}/v1`, maxRetries: 2 })
    const failure = await client.chat.completions
      .create({ model: name, messages: [{ role: "user", content: "slow" }] }, { headers: { "X-Relay-Timeout": "0.3" } })
      .catch((e: unknown) => e)
    assert.instanceOf(failure, OpenAI.APIError)
    assert.strictEqual((failure as InstanceType<typeof OpenAI.APIError>).status, 504)
    assert.strictEqual((failure as InstanceType<typeof OpenAI.APIError>).headers?.get("x-should-retry"), "false")
    // the SDK's promise settles only after any retries it makes
    await publisher.next((f) => f.event === "cancel")
    assert.strictEqual(publisher.tasks().length, 1, "one task: the SDK did not send the call again")
    publisher.disconnect()
  })
})

describe("public LLMs", () => {
  it("an upstream that never answers: 504 Timeout after X-Relay-Timeout, and the upstream request is aborted", async () => {
    let aborted = false
    const silent = Http.createServer((_req, res) => {
      res.on("close", () => (aborted = true)) // never answered: only the broker giving up closes it
    })
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve))
    try {
      const port = (silent.address() as { port: number }).port
      const name = unique("silent")
      const created = await call("/v1/llms", {
        method: "POST",
        token: broker.adminToken,
        raw: JSON.stringify({ name, model: "m", url: `http://127.0.0.1:${port}/v1` })
      })
      assert.strictEqual(created.status, 201)
      const started = performance.now()
      const response = await fetch(`${broker.url}/v1/chat/completions`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${clientToken}`,
          "content-type": "application/json",
          "x-relay-timeout": "1"
        },
        body: JSON.stringify({ model: name, messages: [] })
      })
      assert.strictEqual(response.status, 504)
      assert.strictEqual(((await response.json()) as { error: { type: string } }).error.type, "Timeout")
      assert.isBelow(performance.now() - started, 10_000)
      for (let i = 0; i < 100 && !aborted; i++) await new Promise((r) => setTimeout(r, 20))
      assert.isTrue(aborted, "the upstream request was aborted")
    } finally {
      silent.closeAllConnections()
      silent.close()
    }
  })

  it("an upstream nobody listens on: 502 UpstreamError naming the LLM and the error code, never its address", async () => {
    const closed = Http.createServer()
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve))
    const port = (closed.address() as { port: number }).port
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    const name = unique("gone")
    const created = await call("/v1/llms", {
      method: "POST",
      token: broker.adminToken,
      raw: JSON.stringify({ name, model: "m", url: `http://127.0.0.1:${port}/v1` })
    })
    assert.strictEqual(created.status, 201)
    const response = await fetch(`${broker.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${clientToken}`, "content-type": "application/json" },
      body: JSON.stringify({ model: name, messages: [] })
    })
    assert.strictEqual(response.status, 502)
    const { error } = (await response.json()) as { error: { type: string; message: string } }
    assert.strictEqual(error.type, "UpstreamError")
    assert.match(error.message, new RegExp(`'${name}' is unreachable \\(ECONNREFUSED\\)`))
    assert.notInclude(error.message, String(port))
  })

  it("are proxied by name and by a pool of only public rows, streamed or not; the API key never comes back", async () => {
    const upstream = await startFakeUpstream({ chunks: 3 })
    try {
      const name = unique("public")
      const pool = unique("public-pool")
      const created = await call("/v1/llms", {
        method: "POST",
        token: broker.adminToken,
        raw: JSON.stringify({
          name,
          model: "upstream-model",
          url: upstream.baseUrl,
          apiKey: "sk-secret-upstream",
          pool
        })
      })
      assert.strictEqual(created.status, 201, JSON.stringify(created.body))
      assert.strictEqual(created.body.kind, "public")
      const listed = await call("/v1/llms", { token: clientToken })
      assert.notInclude(JSON.stringify([created.body, listed.body]), "sk-secret-upstream")
      const client = broker.openai(clientToken)
      const byName = await client.chat.completions.create({ model: name, messages: [{ role: "user", content: "one" }] })
      assert.strictEqual(byName.choices[0]!.message.content, "echo: one")
      const byPool = await client.chat.completions.create({ model: pool, messages: [{ role: "user", content: "two" }] })
      assert.strictEqual(byPool.choices[0]!.message.content, "echo: two")
      const stream = await client.chat.completions.create({
        model: pool,
        messages: [{ role: "user", content: "three" }],
        stream: true
      })
      let text = ""
      for await (const part of stream) text += part.choices[0]?.delta?.content ?? ""
      assert.strictEqual(text, "echo: three")
      assert.deepStrictEqual(upstream.received.map((r) => [r.path, r.body.model]), [
        ["/v1/chat/completions", "upstream-model"],
        ["/v1/chat/completions", "upstream-model"],
        ["/v1/chat/completions", "upstream-model"]
      ])
      const queued = await createTask(name)
      assert.strictEqual(queued.status, 400, "a public LLM has no publisher to queue for")
      assert.strictEqual(queued.body.error.type, "NotVirtual")
      const deleted = await fetch(`${broker.url}/v1/llms/${name}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${broker.adminToken}` }
      })
      assert.strictEqual(deleted.status, 204)
      const gone = await client.chat.completions.create({ model: name, messages: [] }).catch((e: unknown) => e)
      assert.strictEqual((gone as InstanceType<typeof OpenAI.APIError>).status, 404)
    } finally {
      await upstream.close()
    }
  })
})
