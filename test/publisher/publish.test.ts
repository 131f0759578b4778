/**
 * `bin/llm-relay publish` end to end: the real broker on real PostgreSQL, the
 * publisher as its own process (spawned as a user runs it), a fake upstream
 * OpenAI-compatible server, and the official `openai` SDK as the client.
 */
import { Duration, Effect } from "effect"
import { Exit, Scope } from "effect"
import OpenAI from "openai"
import { afterAll, afterEach, assert, beforeAll, describe, it } from "vitest"
import { freePort } from "../../src/db/Embedded.js"
import { startBroker, type TestBroker } from "../support/broker.js"
import { startFakeUpstream } from "../support/fakeUpstream.js"
import { type Spawned, spawnRelay } from "../support/process.js"
import { createDatabase } from "../support/TestDatabase.js"

let broker: TestBroker
let client: OpenAI
let publisherToken: string
let clientToken: string
const cleanups: Array<() => Promise<unknown> | unknown> = []

beforeAll(async () => {
  broker = await startBroker()
  clientToken = await broker.token("client")
  client = broker.openai(clientToken)
  publisherToken = await broker.token("publisher")
})
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})
afterAll(() => broker?.close())

let counter = 0
const unique = (prefix: string) => `${prefix}-${++counter}-${Math.random().toString(36).slice(2, 6)}`

const upstream = async (settings: Parameters<typeof startFakeUpstream>[0] = {}) => {
  const fake = await startFakeUpstream(settings)
  cleanups.push(() => fake.close())
  return fake
}

const kill = (p: Spawned, signal: NodeJS.Signals = "SIGKILL") => {
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal)
  return p.exited
}

/** Starts `llm-relay publish` and waits until it is connected. */
const publish = async (providers: ReadonlyArray<string>, server = broker.url, extra: ReadonlyArray<string> = []) => {
  const args = ["publish", "--server", server, "--token", publisherToken, ...extra]
  for (const p of providers) args.push("--provider", p)
  const p = spawnRelay(args)
  cleanups.push(() => kill(p))
  await p.waitFor(/connected to .* as session (\S+)/)
  return p
}

const sessionOf = (p: Spawned) => p.output.match(/as session (\S+)/)![1]!

const llms = async (url = broker.url, token = publisherToken) => {
  const response = await fetch(`${url}/v1/llms`, { headers: { authorization: `Bearer ${token}` } })
  return ((await response.json()) as {
    data: Array<{ name: string; status: string; healthy: boolean; providerSessionId: string | null }>
  }).data
}

const ask = (model: string, content: string, c = client) =>
  c.chat.completions.create({ model, messages: [{ role: "user", content }] })

const askStreaming = async (model: string, content: string, c = client) => {
  const stream = await c.chat.completions.create({ model, messages: [{ role: "user", content }], stream: true })
  let text = ""
  for await (const part of stream) text += part.choices[0]?.delta?.content ?? ""
  return text
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitUntil = async (check: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000) => {
  const deadline = performance.now() + timeoutMs
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

describe("llm-relay publish", () => {
  it("relays non-streaming and streaming answers intact, rewriting model to the upstream's name", async () => {
    const fake = await upstream({ chunks: 7 })
    const name = unique("local")
    await publish([`name=${name},upstream=${fake.baseUrl},model=upstream-model-7b`])
    const answer = await ask(name, "hello there")
    assert.strictEqual(answer.choices[0]!.message.content, "echo: hello there")
    assert.strictEqual(fake.received[0]!.body.model, "upstream-model-7b")
    assert.strictEqual(fake.received[0]!.path, "/v1/chat/completions")
    assert.strictEqual(await askStreaming(name, "a streamed answer"), "echo: a streamed answer")
  })

  it("relays /v1/completions and /v1/embeddings too (the SDK's completions.create and embeddings.create)", async () => {
    const fake = await upstream()
    const name = unique("multi")
    await publish([`name=${name},upstream=${fake.baseUrl},model=upstream-m`])
    const text = await client.completions.create({ model: name, prompt: "finish this" })
    assert.strictEqual(text.choices[0]!.text, "echo: finish this")
    const floats = await client.embeddings.create({ model: name, input: ["abc", "hello"], encoding_format: "float" })
    assert.deepStrictEqual(floats.data.map((d) => d.embedding), [[3, 0.5], [5, 0.5]])
    const decoded = await client.embeddings.create({ model: name, input: "four" }) // the SDK asks for base64 and decodes it
    assert.deepStrictEqual(Array.from(decoded.data[0]!.embedding), [4, 0.5])
    assert.deepStrictEqual(fake.received.map((r) => [r.path, r.body.model]), [
      ["/v1/completions", "upstream-m"],
      ["/v1/embeddings", "upstream-m"],
      ["/v1/embeddings", "upstream-m"]
    ])
  })

  it("50 concurrent calls across 2 providers all answer right, never above each provider's maxConcurrent upstream", async () => {
    const [a, b] = [await upstream({ delayMs: 40 }), await upstream({ delayMs: 40, chunks: 4 })]
    const [nameA, nameB] = [unique("a"), unique("b")]
    await publish([
      `name=${nameA},upstream=${a.baseUrl},model=ma,maxConcurrent=3`,
      `name=${nameB},upstream=${b.baseUrl},model=mb,maxConcurrent=5`
    ])
    const calls = Array.from({ length: 50 }, (_, i) =>
      i % 2 === 0
        ? ask(nameA, `q${i}`).then((r) => assert.strictEqual(r.choices[0]!.message.content, `echo: q${i}`))
        : askStreaming(nameB, `q${i}`).then((text) => assert.strictEqual(text, `echo: q${i}`)))
    await Promise.all(calls)
    assert.strictEqual(a.received.length, 25)
    assert.strictEqual(b.received.length, 25)
    assert.isAtMost(a.maxInFlight(), 3)
    assert.isAtMost(b.maxInFlight(), 5)
    assert.isAtLeast(a.maxInFlight(), 2, "the calls did overlap")
  })

  it("passes an upstream error status and message through to the client", async () => {
    const fake = await upstream({ failStatus: 429 })
    const name = unique("busy")
    await publish([`name=${name},upstream=${fake.baseUrl},model=m`])
    const error = await ask(name, "hi").then(() => null, (e: unknown) => e)
    assert.instanceOf(error, OpenAI.APIError)
    assert.strictEqual((error as InstanceType<typeof OpenAI.APIError>).status, 429)
    assert.include((error as Error).message, "upstream says no (429)")
  })

  it("the client aborting a streaming call aborts the upstream request", async () => {
    const fake = await upstream({ chunks: 200, chunkDelayMs: 50 })
    const name = unique("slow")
    await publish([`name=${name},upstream=${fake.baseUrl},model=m`])
    const controller = new AbortController()
    const stream = await client.chat.completions.create(
      { model: name, messages: [{ role: "user", content: "a long story" }], stream: true },
      { signal: controller.signal }
    )
    let parts = 0
    for await (const _ of stream) {
      if (++parts === 3) break
    }
    controller.abort()
    assert.strictEqual(parts, 3)
    await waitUntil(() => fake.received[0]?.aborted === true, "the upstream to see the abort")
    assert.isFalse(fake.received[0]!.finished)
  })

  it("SIGKILL of the publisher holding a not-yet-streamed task: the call succeeds via the other pool member", async () => {
    const [slow, fast] = [await upstream({ delayMs: 60_000 }), await upstream()]
    const pool = unique("pool")
    const victim = await publish([`name=${unique("p1")},upstream=${slow.baseUrl},model=m,pool=${pool}`])
    const answer = ask(pool, "survive")
    await waitUntil(() => slow.received.length === 1, "the first publisher to take the task")
    await publish([`name=${unique("p2")},upstream=${fast.baseUrl},model=m,pool=${pool}`])
    await kill(victim)
    const result = await answer
    assert.strictEqual(result.choices[0]!.message.content, "echo: survive")
    assert.strictEqual(fast.received.length, 1)
  })

  it("SIGKILL, then a call while it is away: the call waits (reconnect grace) and the restarted publisher serves it", async () => {
    const fake = await upstream()
    const name = unique("blip")
    const provider = `name=${name},upstream=${fake.baseUrl},model=m`
    const first = await publish([provider])
    const sessionId = sessionOf(first)
    assert.strictEqual((await ask(name, "before")).choices[0]!.message.content, "echo: before") // its stream is open
    await kill(first)
    await waitUntil(async () => (await llms()).find((l) => l.name === name)?.status === "inactive", "the drop")
    // gone without a goodbye: not 503 at once, the call waits for the publisher to come back
    const answer = ask(name, "after the blip")
    const settled = await Promise.race([
      answer.then(() => "answered", () => "failed"),
      sleep(1000).then(() => "waiting")
    ])
    assert.strictEqual(settled, "waiting")
    await publish([provider], broker.url, ["--session-id", sessionId])
    assert.strictEqual((await answer).choices[0]!.message.content, "echo: after the blip")
  })

  it("SIGTERM with a task in flight: the task completes, then the session is gone (inactive)", async () => {
    const fake = await upstream({ delayMs: 1500 })
    const name = unique("drain")
    const p = await publish([`name=${name},upstream=${fake.baseUrl},model=m`])
    const answer = ask(name, "finish me")
    await waitUntil(() => fake.received.length === 1, "the task to reach the upstream")
    p.child.kill("SIGTERM")
    // draining: first reported unhealthy, so nothing new comes, while the task in flight goes on
    await waitUntil(async () => (await llms()).find((l) => l.name === name)?.healthy === false, "unhealthy")
    assert.strictEqual(fake.received[0]!.finished, false, "reported before the task in flight finished")
    const result = await answer
    assert.strictEqual(result.choices[0]!.message.content, "echo: finish me")
    assert.strictEqual(await p.exited, 0)
    assert.match(p.output, /goodbye/)
    assert.notMatch(p.output, /reconnecting/, "a goodbye is not a lost connection")
    const row = (await llms()).find((l) => l.name === name)
    assert.strictEqual(row?.status, "inactive")
  })

  it("SIGTERM with a task stuck past --drain-timeout: the wait is cut short, the upstream call aborted, goodbye said", async () => {
    const fake = await upstream({ delayMs: 120_000 })
    const name = unique("stuck")
    const p = await publish([`name=${name},upstream=${fake.baseUrl},model=m`], broker.url, ["--drain-timeout", "1"])
    const leave = new AbortController()
    const answer = client.chat.completions
      .create({ model: name, messages: [{ role: "user", content: "never answered" }] }, { signal: leave.signal })
      .catch((e: unknown) => e)
    await waitUntil(() => fake.received.length === 1, "the task to reach the upstream")
    p.child.kill("SIGTERM")
    // the upstream would answer in 2 minutes; the drain limit is 1 s
    assert.strictEqual(await p.exited, 0)
    assert.match(p.output, /goodbye/)
    await waitUntil(() => fake.received[0]!.aborted, "the upstream request to be aborted")
    assert.strictEqual((await llms()).find((l) => l.name === name)?.status, "inactive")
    // back in the queue at goodbye, with nobody left to serve it: either the reconnect grace runs
    // out first (503 PublisherOffline, the task cancelled) or the client gives up; both end the task
    leave.abort()
    const outcome = await answer
    if (!(outcome instanceof OpenAI.APIUserAbortError)) {
      assert.instanceOf(outcome, OpenAI.APIError)
      assert.strictEqual((outcome as InstanceType<typeof OpenAI.APIError>).status, 503)
      assert.match(String((outcome as Error).message), /no publisher serving/)
    }
    const newest = async () => {
      const response = await fetch(`${broker.url}/v1/tasks?limit=1`, {
        headers: { authorization: `Bearer ${clientToken}` }
      })
      return ((await response.json()) as { data: Array<{ status: string }> }).data[0]?.status
    }
    await waitUntil(async () => (await newest()) === "cancelled", "the abandoned task to be cancelled")
  })

  it("an upstream 200 that is not JSON is a 502 UpstreamError, not an empty success; --provider=… works too", async () => {
    const fake = await upstream({ plainText: "<html>proxy login</html>" })
    const name = unique("plain")
    await publish([], broker.url, [`--provider=name=${name},upstream=${fake.baseUrl},model=m`])
    const failure = await ask(name, "hi").catch((e: unknown) => e)
    assert.instanceOf(failure, OpenAI.APIError)
    assert.strictEqual((failure as InstanceType<typeof OpenAI.APIError>).status, 502)
    assert.match(String((failure as Error).message), /not JSON/)
    // the client is told which provider, never where its upstream lives
    assert.notInclude(String((failure as Error).message), new URL(fake.baseUrl).host)
  })

  it("asked to stream, an upstream that answers whole JSON: the SDK still reads a stream, holding the whole answer", async () => {
    const fake = await upstream({ neverStream: true })
    const name = unique("whole")
    await publish([`name=${name},upstream=${fake.baseUrl},model=m`])
    assert.strictEqual(await askStreaming(name, "whole"), "echo: whole")
  })

  it("bad --provider strings exit 2 naming the bad part, before connecting", async () => {
    const cases: ReadonlyArray<[string, RegExp]> = [
      ["name=x,upstream=http://127.0.0.1:1/v1,model=m,colour=blue", /unknown key 'colour'/],
      ["name=x,upstream=http://127.0.0.1:1/v1", /missing 'model'/],
      ["name=x,upstream=not-a-url,model=m", /upstream.*http\(s\) URL/],
      [
        "name=x,upstream=http://127.0.0.1:1/v1,model=m,maxConcurrent=0",
        /maxConcurrent must be an integer from 1 to 1024/
      ],
      ["name=x,upstream=http://127.0.0.1:1/v1,model=m,maxConcurrent=lots", /maxConcurrent must be an integer/],
      ["justtext", /'justtext' is not key=value/]
    ]
    // all at once: seven node start-ups one after another outlast a minute on a loaded machine
    const spawned = cases.map(([provider, message]) => ({
      p: spawnRelay(["publish", "--server", "http://127.0.0.1:1", "--token", "t", "--provider", provider]),
      message
    }))
    const noServer = spawnRelay(["publish", "--token", "t", "--provider", "name=x,upstream=http://h/v1,model=m"], {
      RELAY_SERVER: undefined
    })
    for (const { message, p } of spawned) {
      assert.strictEqual(await p.exited, 2, p.output)
      assert.match(p.output, message)
    }
    assert.strictEqual(await noServer.exited, 2)
    assert.match(noServer.output, /--server or RELAY_SERVER/)
  }, 120_000)

  it("a name another session holds at start is fatal with a clear message", async () => {
    const fake = await upstream()
    const name = unique("taken")
    await publish([`name=${name},upstream=${fake.baseUrl},model=m`])
    const second = spawnRelay([
      "publish",
      "--server",
      broker.url,
      "--token",
      publisherToken,
      "--provider",
      `name=${name},upstream=${fake.baseUrl},model=m`
    ])
    assert.strictEqual(await second.exited, 1)
    assert.match(second.output, /name conflict/)
  })
})

describe("llm-relay publish with an upstream down", () => {
  // a short grace, so that a pool with nobody healthy answers 503 soon
  let shortGrace: TestBroker
  let shortClient: OpenAI
  let token: string
  beforeAll(async () => {
    shortGrace = await startBroker({ reconnectGrace: Duration.seconds(6) })
    shortClient = shortGrace.openai(await shortGrace.token("client"))
    token = await shortGrace.token("publisher")
  })
  afterAll(() => shortGrace?.close())

  const publishTo = async (provider: string) => {
    const p = spawnRelay(["publish", "--server", shortGrace.url, "--token", token, "--provider", provider])
    cleanups.push(() => kill(p))
    await p.waitFor(/connected to .* as session (\S+)/)
    return p
  }
  const healthOf = async (name: string) => (await llms(shortGrace.url, token)).find((l) => l.name === name)?.healthy

  it("an upstream down at start: the provider is reported unhealthy, and calls wait the grace, then 503", async () => {
    const port = await Effect.runPromise(freePort)
    const name = unique("down")
    const p = await publishTo(`name=${name},upstream=http://127.0.0.1:${port}/v1,model=m`)
    await waitUntil(async () => (await healthOf(name)) === false, "the provider to be reported unhealthy")
    assert.match(p.output, new RegExp(`upstream unhealthy \\(ECONNREFUSED 127\\.0\\.0\\.1:${port}\\)`))
    const started = performance.now()
    const error = await ask(name, "hi", shortClient).then(() => null, (e: unknown) => e)
    assert.instanceOf(error, OpenAI.APIError)
    assert.strictEqual((error as InstanceType<typeof OpenAI.APIError>).status, 503)
    assert.include((error as Error).message, "no publisher")
    assert.isAtLeast(performance.now() - started, 1000, "it waited for the grace, it was not refused at once")
    assert.notMatch(p.output, /task \S+ provider=/, "no task was dispatched to it")
  })

  it("two publishers on one pool, one upstream dead: the dead one hands its task back and the other serves it", async () => {
    const [dying, alive] = [await upstream(), await upstream()]
    const pool = unique("pool")
    const [deadName, liveName] = [unique("dead"), unique("live")]
    const victim = await publishTo(`name=${deadName},upstream=${dying.baseUrl},model=m,pool=${pool}`)
    await waitUntil(() => dying.probes() >= 1, "the probe at start, while the upstream is up")
    await dying.close()
    // alone in its pool: the call goes to the publisher whose upstream just died. It
    // waits for the other publisher past the grace (starting a process may take longer)
    const answer = shortClient.chat.completions.create(
      { model: pool, messages: [{ role: "user", content: "survive" }] },
      { headers: { "X-Relay-Max-Wait": "60" } }
    )
    await victim.waitFor(/handed back: upstream unreachable \(ECONNREFUSED 127\.0\.0\.1:\d+\)/)
    await waitUntil(async () => (await healthOf(deadName)) === false, "the dead provider to be reported unhealthy")
    await publishTo(`name=${liveName},upstream=${alive.baseUrl},model=m,pool=${pool}`)
    const result = await answer
    assert.strictEqual(result.choices[0]!.message.content, "echo: survive")
    assert.strictEqual(alive.received.length, 1)
    // later calls go to the healthy member only
    for (const q of ["one", "two", "three"]) {
      assert.strictEqual((await ask(pool, q, shortClient)).choices[0]!.message.content, `echo: ${q}`)
    }
    assert.strictEqual(alive.received.length, 4)
    assert.strictEqual((victim.output.match(/handed back/g) ?? []).length, 1)
  })
})

describe("llm-relay publish against a restarted broker", () => {
  const scope = Effect.runSync(Scope.make())
  let databaseUrl: string
  beforeAll(async () => {
    databaseUrl = (await Effect.runPromise(Scope.extend(createDatabase, scope))).url
  })
  afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

  it("reconnects with the same session id and serves again, without a restart of its own", async () => {
    const admin = "a".repeat(48)
    const port = await Effect.runPromise(freePort)
    const url = `http://127.0.0.1:${port}`
    const serve = () => {
      const p = spawnRelay(["serve", "--port", String(port)], { DATABASE_URL: databaseUrl, RELAY_ADMIN_TOKEN: admin })
      cleanups.push(() => kill(p))
      return p
    }
    let brokerProcess = serve()
    await brokerProcess.waitFor(/Listening on/)
    const token = async (role: string) => {
      const response = await fetch(`${url}/v1/tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
        body: JSON.stringify({ role, name: role })
      })
      return ((await response.json()) as { token: string }).token
    }
    const restartedClient = new OpenAI({ apiKey: await token("client"), baseURL: `${url}/v1`, maxRetries: 0 })
    const fake = await upstream()
    const name = unique("phoenix")
    const pubToken = await token("publisher")
    const p = spawnRelay([
      "publish",
      "--server",
      url,
      "--token",
      pubToken,
      "--provider",
      `name=${name},upstream=${fake.baseUrl},model=m`
    ])
    cleanups.push(() => kill(p))
    await p.waitFor(/connected to .* as session (\S+)/)
    const session = sessionOf(p)
    assert.strictEqual((await ask(name, "before", restartedClient)).choices[0]!.message.content, "echo: before")

    brokerProcess.child.kill("SIGTERM")
    assert.strictEqual(await brokerProcess.exited, 0)
    brokerProcess = serve()
    await brokerProcess.waitFor(/Listening on/)
    await waitUntil(() => (p.output.match(/connected to /g) ?? []).length >= 2, "the publisher to reconnect", 30_000)
    assert.match(p.output, /reconnecting in/)
    const row = (await llms(url, pubToken)).find((l) => l.name === name)
    assert.strictEqual(row?.providerSessionId, session)
    assert.strictEqual((await ask(name, "after", restartedClient)).choices[0]!.message.content, "echo: after")
    assert.isNull(p.child.exitCode, "the publisher kept running")
  })
})
