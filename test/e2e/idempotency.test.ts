/**
 * `Idempotency-Key` end to end (PROTOCOL.md client routes): a retry after a
 * dropped connection attaches to the first task and never runs the model
 * twice — with the official `openai` SDK as the client, and a raw publisher
 * that counts the task frames it gets.
 */
import OpenAI from "openai"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { startBroker, type TestBroker } from "../support/broker.js"
import { chunk, completion, RawPublisher } from "../support/rawPublisher.js"

let broker: TestBroker
let clientToken: string
let otherClientToken: string
let publisherToken: string

beforeAll(async () => {
  broker = await startBroker()
  clientToken = await broker.token("client")
  otherClientToken = await broker.token("client")
  publisherToken = await broker.token("publisher")
})
afterAll(() => broker?.close())

let counter = 0
const unique = (prefix: string) => `${prefix}-${++counter}-${Math.random().toString(36).slice(2, 6)}`

const online = async (name: string) => {
  const publisher = new RawPublisher(broker.url, publisherToken)
  const response = await publisher.register([{ name }])
  assert.strictEqual(response.status, 200, await response.clone().text())
  await publisher.connect()
  return publisher
}

const post = (path: string, body: unknown, headers: Record<string, string>, token = clientToken) =>
  fetch(`${broker.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...headers },
    body: JSON.stringify(body)
  })

describe("Idempotency-Key", () => {
  it("a retry after a dropped connection attaches to the first task: one task frame, one answer, the same task id", async () => {
    const name = unique("llm")
    const publisher = await online(name)
    const key = unique("key")
    const client = new OpenAI({ apiKey: clientToken, baseURL: `${broker.url}/v1`, maxRetries: 0 })
    const abort = new AbortController()
    const first = client.chat.completions.create(
      { model: name, messages: [{ role: "user", content: "once" }] },
      { headers: { "Idempotency-Key": key }, signal: abort.signal }
    ).catch((e: unknown) => e)
    const frame = await publisher.nextTask()
    abort.abort() // the connection drops while the publisher works
    assert.instanceOf(await first, Error)

    const retry = client.chat.completions.create(
      { model: name, messages: [{ role: "user", content: "once" }] },
      { headers: { "Idempotency-Key": key } }
    ).withResponse()
    assert.notInclude(
      publisher.cancels().map((c) => c.taskId),
      frame.taskId,
      "with a key, the dropped connection does not cancel the task"
    )
    const done = await publisher.post(frame.taskId, "result", {
      status: 200,
      body: completion("the only answer"),
      attempt: frame.attempt
    })
    assert.strictEqual(done.status, 204)
    const { data, response } = await retry
    assert.strictEqual(data.choices[0]!.message.content, "the only answer")
    assert.strictEqual(response.headers.get("x-relay-task-id"), frame.taskId)
    assert.strictEqual(publisher.tasks().length, 1, "the model ran once")

    // after the end, the same key answers the stored answer at once
    const again = await post("/v1/chat/completions", { model: name, messages: [{ role: "user", content: "once" }] }, {
      "idempotency-key": key
    })
    assert.strictEqual(again.status, 200)
    const stored = (await again.json()) as { choices: Array<{ message: { content: string } }> }
    assert.strictEqual(stored.choices[0]!.message.content, "the only answer")
    assert.strictEqual(publisher.tasks().length, 1)
    publisher.disconnect()
  })

  it("a streamed retry gets the whole output from the first chunk, then the rest, then [DONE]", async () => {
    const name = unique("llm")
    const publisher = await online(name)
    const key = unique("key")
    const body = { model: name, stream: true, messages: [{ role: "user", content: "stream once" }] }
    const abort = new AbortController()
    const firstResponse = fetch(`${broker.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${clientToken}`, "content-type": "application/json", "idempotency-key": key },
      body: JSON.stringify(body),
      signal: abort.signal
    })
    const frame = await publisher.nextTask()
    await publisher.post(frame.taskId, "chunks", { chunks: [chunk("one "), chunk("two ")], attempt: frame.attempt })
    const reader = (await firstResponse).body!.getReader()
    let seen = ""
    while (!seen.includes("two ")) seen += new TextDecoder().decode((await reader.read()).value)
    abort.abort()

    const retry = await post("/v1/chat/completions", body, { "idempotency-key": key })
    assert.strictEqual(retry.status, 200)
    assert.strictEqual(retry.headers.get("x-relay-task-id"), frame.taskId)
    await publisher.post(frame.taskId, "chunks", { chunks: [chunk("three")], attempt: frame.attempt })
    await publisher.post(frame.taskId, "result", { status: 200, attempt: frame.attempt })
    const text = await retry.text()
    const contents = text.split("\n\n").filter((e) => e.startsWith("data: ") && !e.includes("[DONE]")).map((e) =>
      JSON.parse(e.slice(6)).choices[0].delta.content
    )
    assert.deepStrictEqual(contents, ["one ", "two ", "three"])
    assert.isTrue(text.trimEnd().endsWith("data: [DONE]"))
    assert.strictEqual(publisher.tasks().length, 1, "the model ran once")
    publisher.disconnect()
  })

  it("the same key for a different request is a 400 naming Idempotency-Key; another principal's key is its own", async () => {
    const name = unique("llm")
    const publisher = await online(name)
    const key = unique("key")
    const created = await post("/v1/tasks", { model: name, body: { model: name, messages: [] } }, {
      "idempotency-key": key
    })
    assert.strictEqual(created.status, 202)
    const task = (await created.json()) as { id: string }
    const repeated = await post("/v1/tasks", { model: name, body: { model: name, messages: [] } }, {
      "idempotency-key": key
    })
    assert.strictEqual(repeated.status, 202)
    assert.strictEqual(((await repeated.json()) as { id: string }).id, task.id, "the same task, not a second one")

    const different = await post("/v1/tasks", { model: name, body: { model: name, messages: [{ x: 1 }] } }, {
      "idempotency-key": key
    })
    assert.strictEqual(different.status, 400)
    const error = ((await different.json()) as { error: { type: string; message: string } }).error
    assert.strictEqual(error.type, "BadRequest")
    assert.include(error.message, "Idempotency-Key")

    const theirs = await post("/v1/tasks", { model: name, body: { model: name, messages: [] } }, {
      "idempotency-key": key
    }, otherClientToken)
    assert.strictEqual(theirs.status, 202)
    assert.notStrictEqual(((await theirs.json()) as { id: string }).id, task.id)

    const malformed = await post("/v1/tasks", { model: name, body: { model: name, messages: [] } }, {
      "idempotency-key": "x".repeat(256)
    })
    assert.strictEqual(malformed.status, 400)
    assert.include(((await malformed.json()) as { error: { message: string } }).error.message, "Idempotency-Key")
    publisher.disconnect()
  })
})
