/**
 * Limits per principal (PROTOCOL v1.1, issue 14): past a limit, 429
 * RateLimited with Retry-After and nothing stored or started; a place given
 * back (a stream closed, a task taken) is free again. Small limits, a real
 * broker over HTTP.
 */
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { startBroker, type TestBroker } from "../support/broker.js"
import { chunk, RawPublisher } from "../support/rawPublisher.js"

let broker: TestBroker
beforeAll(async () => {
  broker = await startBroker({ limitWaiting: 3, limitTaskStreams: 2, limitLlms: 3, limitPending: 2 })
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
  const json = (text === "" ? undefined : JSON.parse(text)) as any
  return { status: response.status, json, retryAfter: response.headers.get("retry-after") }
}

/** An SSE response kept open, read until it is closed. */
const openStream = async (token: string, path: string) => {
  const controller = new AbortController()
  const response = await fetch(`${broker.url}${path}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: controller.signal
  })
  if (response.ok) void response.body!.pipeTo(new WritableStream()).catch(() => undefined)
  else await response.text()
  return { status: response.status, retryAfter: response.headers.get("retry-after"), close: () => controller.abort() }
}

let n = 0
const unique = (label: string) => `${label}-${++n}-${Math.random().toString(36).slice(2, 7)}`

const assertLimited = (
  answer: { status: number; retryAfter: string | null; json?: { error: { type: string; message: string } } },
  what: RegExp
) => {
  assert.strictEqual(answer.status, 429)
  assert.match(answer.retryAfter ?? "", /^\d+$/)
  if (answer.json !== undefined) {
    assert.strictEqual(answer.json.error.type, "RateLimited")
    assert.match(answer.json.error.message, what)
  }
}

/** Waits until `check` holds (a freed place is counted as the response ends). */
const eventually = async (check: () => Promise<boolean>, what: string) => {
  const deadline = Date.now() + 10_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within 10 s: ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

describe("limits per principal", () => {
  it("waiting: /events streams and calls share the limit; the next gets 429 until one closes; others are unaffected", async () => {
    const publisher = await broker.token("publisher")
    const client = await broker.token("client")
    const other = await broker.token("client")
    const model = unique("quiet")
    assert.strictEqual(
      (await call(publisher, "POST", "/v1/publishers/sessions", { providers: [{ name: model, model: "m" }] })).status,
      200
    )
    const task = await call(client, "POST", "/v1/tasks", {
      model,
      path: "/v1/chat/completions",
      body: { model, messages: [{ role: "user", content: "hi" }] }
    })
    assert.strictEqual(task.status, 202)
    const events = `/v1/tasks/${task.json.id}/events`
    const open = [await openStream(client, events), await openStream(client, events), await openStream(client, events)]
    assert.deepStrictEqual(open.map((s) => s.status), [200, 200, 200])
    const fourth = await openStream(client, events)
    assertLimited(fourth, /RELAY_LIMIT_WAITING/)
    const waiting = await call(client, "GET", `/v1/tasks/${task.json.id}/wait?timeoutMs=10`)
    assertLimited(waiting, /RELAY_LIMIT_WAITING/)
    const chat = await call(client, "POST", "/v1/chat/completions", {
      model,
      messages: [{ role: "user", content: "x" }]
    })
    assertLimited(chat, /RELAY_LIMIT_WAITING/)
    // another principal has its own places
    const theirs = await call(other, "POST", "/v1/tasks", {
      model,
      path: "/v1/chat/completions",
      body: { model, messages: [{ role: "user", content: "hi" }] }
    })
    // (its wait runs out: 504, not 429)
    assert.strictEqual((await call(other, "GET", `/v1/tasks/${theirs.json.id}/wait?timeoutMs=10`)).status, 504)
    open[0]!.close()
    await eventually(async () => {
      const again = await openStream(client, events)
      again.close()
      return again.status === 200
    }, "a closed stream's place to be free")
    for (const s of open) s.close()
  })

  it("task streams: a principal's third open publisher stream is 429", async () => {
    const publisher = await broker.token("publisher")
    const sessions: Array<string> = []
    for (let i = 0; i < 3; i++) {
      const registered = await call(publisher, "POST", "/v1/publishers/sessions", {
        providers: [{ name: unique(`s${i}`), model: "m" }]
      })
      sessions.push(registered.json.sessionId)
    }
    // the 3 rows above fill RELAY_LIMIT_LLMS for this principal; the streams are what is counted here
    const a = await openStream(publisher, `/v1/publishers/sessions/${sessions[0]}/tasks`)
    const b = await openStream(publisher, `/v1/publishers/sessions/${sessions[1]}/tasks`)
    assert.deepStrictEqual([a.status, b.status], [200, 200])
    assertLimited(
      await openStream(publisher, `/v1/publishers/sessions/${sessions[2]}/tasks`),
      /RELAY_LIMIT_TASK_STREAMS/
    )
    a.close()
    await eventually(async () => {
      const c = await openStream(publisher, `/v1/publishers/sessions/${sessions[2]}/tasks`)
      c.close()
      return c.status === 200
    }, "the closed stream's place to be free")
    b.close()
  })

  it("LLM rows: past RELAY_LIMIT_LLMS a registration is 429 and stores nothing; re-registering what it has is fine", async () => {
    const publisher = await broker.token("publisher")
    const names = [unique("r1"), unique("r2"), unique("r3")]
    const first = await call(publisher, "POST", "/v1/publishers/sessions", {
      providers: names.map((name) => ({ name, model: "m" }))
    })
    assert.strictEqual(first.status, 200)
    const extra = unique("r4")
    const more = await call(publisher, "POST", "/v1/publishers/sessions", { providers: [{ name: extra, model: "m" }] })
    assertLimited(more, /RELAY_LIMIT_LLMS/)
    const listed = (await call(broker.adminToken, "GET", "/v1/llms?limit=1000")).json.data.map((l: { name: string }) =>
      l.name
    )
    assert.notInclude(listed, extra)
    const again = await call(publisher, "POST", "/v1/publishers/sessions", {
      sessionId: first.json.sessionId,
      providers: names.map((name) => ({ name, model: "m" }))
    })
    assert.strictEqual(again.status, 200)
  })

  it("pending tasks: past RELAY_LIMIT_PENDING an enqueue is 429 and stores nothing; cancelling one makes room", async () => {
    const publisher = await broker.token("publisher")
    const client = await broker.token("client")
    const model = unique("backlog")
    await call(publisher, "POST", "/v1/publishers/sessions", { providers: [{ name: model, model: "m" }] })
    const enqueue = () =>
      call(client, "POST", "/v1/tasks", {
        model,
        path: "/v1/chat/completions",
        body: { model, messages: [{ role: "user", content: "hi" }] }
      })
    const first = await enqueue()
    assert.strictEqual(first.status, 202)
    assert.strictEqual((await enqueue()).status, 202)
    const third = await enqueue()
    assertLimited(third, /RELAY_LIMIT_PENDING/)
    assert.strictEqual(third.retryAfter, "5")
    assert.strictEqual((await call(client, "GET", "/v1/tasks?limit=500")).json.data.length, 2, "nothing stored")
    assert.strictEqual((await call(client, "DELETE", `/v1/tasks/${first.json.id}`)).status, 200)
    assert.strictEqual((await enqueue()).status, 202)
  })
})

describe("the body limit", () => {
  it("a chunked body (no Content-Length) over the limit is 413 PayloadTooLarge, answered, not a reset connection", async () => {
    const small = await startBroker({ maxBodyBytes: 1024 * 1024 })
    try {
      const client = await small.token("client")
      const piece = new TextEncoder().encode("x".repeat(64 * 1024))
      let sent = 0
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          // 4 MiB in all, four times the limit, in 64 KiB pieces
          if (sent >= 4 * 1024 * 1024) return controller.close()
          if (sent === 0) controller.enqueue(new TextEncoder().encode("{\"model\":\"m\",\"messages\":[],\"pad\":\""))
          controller.enqueue(piece)
          sent += piece.length
        }
      })
      const response = await fetch(`${small.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${client}`, "content-type": "application/json" },
        body,
        duplex: "half"
      } as RequestInit)
      assert.strictEqual(response.status, 413)
      const { error } = (await response.json()) as { error: { type: string } }
      assert.strictEqual(error.type, "PayloadTooLarge")
    } finally {
      await small.close()
    }
  })
})

describe("a caller that does not read its stream", () => {
  it(
    "is cut off once its unread output passes RELAY_MAX_BUFFERED_OUTPUT, and its task is cancelled (the publisher is told 410)",
    async () => {
      const small = await startBroker({ maxBufferedOutput: 256 * 1024 })
      const publisher = new RawPublisher(small.url, await small.token("publisher"))
      const controller = new AbortController()
      try {
        const client = await small.token("client")
        const model = unique("firehose")
        assert.strictEqual((await publisher.register([{ name: model, model: "m" }])).status, 200)
        await publisher.connect()
        const response = fetch(`${small.url}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${client}`, "content-type": "application/json" },
          body: JSON.stringify({ model, stream: true, messages: [{ role: "user", content: "everything" }] }),
          signal: controller.signal
        })
        const task = await publisher.nextTask()
        assert.strictEqual((await publisher.post(task.taskId, "ack", { attempt: task.attempt })).status, 204)
        const headers = await response // the body is never read
        assert.strictEqual(headers.status, 200)
        const megabyte = chunk("y".repeat(1024 * 1024))
        let cancelled = false
        for (let i = 0; i < 48 && !cancelled; i++) {
          const posted = await publisher.post(task.taskId, "chunks", { attempt: task.attempt, chunks: [megabyte] })
          cancelled = posted.status === 410
          if (!cancelled) assert.strictEqual(posted.status, 204)
        }
        assert.isTrue(cancelled, "the publisher was told to stop (410 TaskCancelled)")
        const stored = await fetch(`${small.url}/v1/tasks/${task.taskId}`, {
          headers: { authorization: `Bearer ${client}` }
        }).then((r) => r.json() as Promise<{ status: string; errorMessage: string }>)
        assert.strictEqual(stored.status, "cancelled")
        assert.match(stored.errorMessage, /RELAY_MAX_BUFFERED_OUTPUT/)
      } finally {
        controller.abort()
        publisher.disconnect()
        await small.close()
      }
    },
    120_000
  )
})
