/**
 * The library surface (src/index.ts), used the way README "Embedding as a
 * Layer" shows: the broker Layer over a SqlClient, its HttpApi on a server of
 * the host's choosing, and the publisher as an Effect in the same program.
 */
import { HttpServer } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import OpenAI from "openai"
import * as Relay from "../src/index.js"
import { startFakeUpstream } from "./support/fakeUpstream.js"
import { ConfigTest } from "./support/layers.js"
import * as TestDatabase from "./support/TestDatabase.js"

const BrokerLive = Relay.layer.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))
const appOn = <E>(broker: Layer.Layer<Layer.Layer.Success<typeof BrokerLive>, E>) =>
  Relay.HttpLive.pipe(
    Layer.provideMerge(Relay.NodeServerLive({ host: "127.0.0.1", port: 0 })),
    Layer.provideMerge(broker)
  )
const AppLive = appOn(BrokerLive)

/**
 * A host app's database, before the broker arrives: its own tables named like
 * the broker's (in `public`, different shapes), with rows in them.
 */
const HostTables = Layer.effectDiscard(
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE public.llms (id serial PRIMARY KEY, title text NOT NULL)`
    yield* sql`CREATE TABLE public.api_tokens (token text PRIMARY KEY, owner text NOT NULL)`
    yield* sql`CREATE TABLE public.inference_tasks (id bigserial PRIMARY KEY, prompt text NOT NULL)`
    yield* sql`INSERT INTO public.llms (title) VALUES ('host llm')`
    yield* sql`INSERT INTO public.api_tokens (token, owner) VALUES ('host-secret', 'host')`
    yield* sql`INSERT INTO public.inference_tasks (prompt) VALUES ('host prompt')`
  })
)
/** The host's tables as they are: what the broker must leave alone. */
const hostRows = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  return {
    llms: yield* sql`SELECT * FROM public.llms ORDER BY id`,
    apiTokens: yield* sql`SELECT * FROM public.api_tokens ORDER BY token`,
    inferenceTasks: yield* sql`SELECT * FROM public.inference_tasks ORDER BY id`
  }
})
// No migrations beforehand: the broker Layer migrates the host's database itself.
const HostBrokerLive = Relay.layer.pipe(
  Layer.provideMerge(
    Layer.merge(HostTables.pipe(Layer.provideMerge(TestDatabase.layerEmpty), Layer.orDie), ConfigTest)
  )
)

/** A publisher and a client, both through the broker's HttpApi, relay one chat completion. */
const relayOneCall = Effect.gen(function*() {
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
})

describe("embedding", () => {
  it.live("the broker Layer, its HttpApi and the publisher run inside one Effect program", () =>
    relayOneCall.pipe(Effect.scoped, Effect.provide(AppLive)))

  it.live("the broker migrates and works in a host database that has its own llms, api_tokens and inference_tasks, leaving them untouched", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const before = yield* hostRows
      assert.deepStrictEqual(before.llms, [{ id: 1, title: "host llm" }])
      yield* relayOneCall
      assert.deepStrictEqual(yield* hostRows, before)
      const ours = yield* sql<{ llms: number; tasks: number }>`
        SELECT (SELECT count(*)::int FROM llm_relay.llms WHERE name = 'embedded') AS llms,
               (SELECT count(*)::int FROM llm_relay.inference_tasks WHERE status = 'completed') AS tasks`
      assert.deepStrictEqual(ours[0], { llms: 1, tasks: 1 })
    }).pipe(Effect.scoped, Effect.provide(appOn(HostBrokerLive))))
})
