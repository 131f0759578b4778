/**
 * What the publisher reads, without processes: server-sent events, error
 * bodies of the broker and of upstreams, and a whole answer turned into the
 * one chunk a streaming client reads.
 */
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import { errorMessageOf } from "../../src/publisher/Answer.js"
import { sseEvents } from "../../src/publisher/Sse.js"
import { wholeAsChunk } from "../../src/publisher/Upstream.js"

describe("sseEvents", () => {
  it.effect("joins data lines, defaults the event name, skips comments and unknown fields", () =>
    Effect.gen(function*() {
      const lines = [
        ": keepalive",
        "event: task",
        "data: {\"a\":1}",
        "",
        "id: 7",
        "data: one",
        "data: two",
        "",
        "",
        "retry: 5"
      ]
      const events = yield* Stream.runCollect(sseEvents(Stream.fromIterable(lines)))
      assert.deepStrictEqual(Chunk.toArray(events), [
        { event: "task", data: "{\"a\":1}" },
        { event: "message", data: "one\ntwo" }
      ])
    }))
})

describe("errorMessageOf", () => {
  it("reads the protocol's and OpenAI's error object and a bare error string", () => {
    assert.strictEqual(
      errorMessageOf({ error: { type: "TaskNotHeld", code: "task_not_held", message: "gone" } }, "x"),
      "gone"
    )
    assert.strictEqual(errorMessageOf({ error: "model not loaded" }, "x"), "model not loaded")
    assert.strictEqual(errorMessageOf({ error: { message: 42 } }, "x"), "42")
  })

  it("falls back for anything else", () => {
    assert.strictEqual(errorMessageOf(undefined, "fallback"), "fallback")
    assert.strictEqual(errorMessageOf({ error: {} }, "fallback"), "fallback")
    assert.strictEqual(errorMessageOf({ error: null }, "fallback"), "fallback")
    assert.strictEqual(errorMessageOf({ detail: "nope" }, "fallback"), "fallback")
    assert.strictEqual(errorMessageOf("error", "fallback"), "fallback")
  })
})

describe("wholeAsChunk", () => {
  it("turns a chat completion into one chunk holding each choice's message as its delta", () => {
    const whole = {
      id: "c1",
      object: "chat.completion",
      model: "m",
      choices: [{ index: 0, message: { role: "assistant", content: "hi" }, finish_reason: "stop" }, {}]
    }
    assert.deepStrictEqual(wholeAsChunk(whole), {
      id: "c1",
      object: "chat.completion.chunk",
      model: "m",
      choices: [
        { index: 0, delta: { role: "assistant", content: "hi" }, finish_reason: "stop" },
        { index: 1, delta: {}, finish_reason: null }
      ]
    })
  })

  it("passes a text completion as it is and nothing else", () => {
    const text = { object: "text_completion", choices: [{ text: "hi", index: 0 }] }
    assert.deepStrictEqual(wholeAsChunk(text), text)
    assert.isUndefined(wholeAsChunk({ object: "list", data: [] }))
    assert.isUndefined(wholeAsChunk({ object: "chat.completion" }))
    assert.isUndefined(wholeAsChunk([{ choices: [] }]))
    assert.isUndefined(wholeAsChunk(null))
  })
})
