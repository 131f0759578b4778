import { assert, describe, it } from "@effect/vitest"
import { joinUpstream } from "../../src/domain/Url.js"

describe("joinUpstream", () => {
  it("does not repeat /v1 when the base ends in it", () => {
    assert.strictEqual(joinUpstream("http://h:8000/v1", "/v1/chat/completions"), "http://h:8000/v1/chat/completions")
    assert.strictEqual(joinUpstream("http://h:8000/v1/", "/v1/embeddings"), "http://h:8000/v1/embeddings")
    assert.strictEqual(
      joinUpstream("https://api.example.com/openai/v1//", "/v1/completions"),
      "https://api.example.com/openai/v1/completions"
    )
  })

  it("appends the whole path to a base without /v1", () => {
    assert.strictEqual(joinUpstream("http://h:8000", "/v1/chat/completions"), "http://h:8000/v1/chat/completions")
    assert.strictEqual(joinUpstream("http://h:8000/", "/v1/chat/completions"), "http://h:8000/v1/chat/completions")
    assert.strictEqual(joinUpstream("http://h:8000/api", "/v1/completions"), "http://h:8000/api/v1/completions")
  })

  it("keeps a base that only ends like /v1 and a path that is not a /v1 route as they are", () => {
    assert.strictEqual(joinUpstream("http://h:8000/xv1", "/v1/completions"), "http://h:8000/xv1/v1/completions")
    assert.strictEqual(joinUpstream("http://h:8000/v1", "/v1"), "http://h:8000/v1/v1")
    assert.strictEqual(joinUpstream("http://h:8000/v1", "/health"), "http://h:8000/v1/health")
  })
})
