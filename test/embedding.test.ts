/**
 * The library surface (src/index.ts), used the way README "Embedding as a
 * Layer" shows: the broker Layer over a SqlClient, its HttpApi on a server of
 * the host's choosing, and the publisher as an Effect in the same program.
 */
import { HttpServer } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import OpenAI from "openai"
import * as Relay from "../src/index.js"
import { startFakeUpstream } from "./support/fakeUpstream.js"
import { ConfigTest } from "./support/layers.js"
import * as TestDatabase from "./support/TestDatabase.js"

const BrokerLive = Relay.layer.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))
const AppLive = Relay.HttpLive.pipe(
  Layer.provideMerge(Relay.NodeServerLive({ host: "127.0.0.1", port: 0 })),
  Layer.provideMerge(BrokerLive)
)

describe("embedding", () => {
  it.live("the broker Layer, its HttpApi and the publisher run inside one Effect program", () =>
    Effect.gen(function* () {
      const fake = yield* Effect.acquireRelease(Effect.promise(() => startFakeUpstream()), (f) => Effect.promise(f.close))
      const tokens = yield* Relay.Tokens
      const address = (yield* HttpServer.HttpServer).address
      if (address._tag !== "TcpAddress") return assert.fail("expected a TCP address")
      const url = `http://127.0.0.1:${address.port}`
      const publisherToken = yield* tokens.create({ role: "publisher", name: "embedded-publisher" })
      const clientToken = yield* tokens.create({ role: "client", name: "embedded-client" })
      yield* Effect.forkScoped(
        Relay.Publisher.run({
          server: url,
          token: publisherToken.token,
          providers: [{ name: "embedded", upstream: fake.baseUrl, model: "upstream-m", maxConcurrent: 2 }]
        }).pipe(Effect.scoped, Effect.provide(NodeHttpClient.layerUndici))
      )
      const registry = yield* Relay.Registry
      for (let i = 0; i < 200; i++) {
        const llms = yield* registry.list
        if (llms.some((l) => l.name === "embedded" && l.status === "active")) break
        yield* Effect.sleep("25 millis")
      }
      const client = new OpenAI({ apiKey: clientToken.token, baseURL: `${url}/v1`, maxRetries: 0 })
      const answer = yield* Effect.promise(() =>
        client.chat.completions.create({ model: "embedded", messages: [{ role: "user", content: "inside" }] })
      )
      assert.strictEqual(answer.choices[0]!.message.content, "echo: inside")
      assert.strictEqual(fake.received[0]!.body.model, "upstream-m")
    }).pipe(Effect.scoped, Effect.provide(AppLive)))
})
