/**
 * `npm run bench [-- --quick] [-- --sessions 1000,5000]`: llm-relay measured
 * against baselines in the same run, everything on loopback — PostgreSQL
 * (`DATABASE_URL` or embedded), a fake upstream, the broker and the
 * publisher as processes, the load generated here.
 *
 * Each figure is reported with its baseline and their ratio; a table goes to
 * stdout and everything to bench/results/<date>.json.
 */
import { Effect, Exit, Redacted, Scope } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import pg from "pg"
import * as Embedded from "../src/db/Embedded.js"
import {
  closedLoop,
  cpuSeconds,
  openLoop,
  progress,
  request,
  ROOT,
  round,
  rssBytes,
  type Spawned,
  spawnNode,
  summarize
} from "./harness.js"
import { graphileCycle, relayCycle } from "./queueCycle.js"

const args = process.argv.slice(2)
const quick = args.includes("--quick")
const sessionsArg = args.includes("--sessions") ? args[args.indexOf("--sessions") + 1] : undefined
const sessionCounts = (sessionsArg ?? (quick ? "200" : "1000,5000")).split(",").map(Number)
const seconds = quick ? 3 : 10
const onlyArg = args.includes("--only") ? args[args.indexOf("--only") + 1] : undefined
const only = new Set((onlyArg ?? "overhead,streaming,sessions,queue").split(","))
const ADMIN = `bench-admin-${Crypto.randomBytes(24).toString("hex")}`

const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  mode: quick ? "quick" : "full",
  machine: { cpus: Os.cpus().length, model: Os.cpus()[0]?.model, node: process.version, memoryGiB: round(Os.totalmem() / 2 ** 30, 1) }
}
const table: Array<[string, string, string, string]> = []
const row = (what: string, relay: number, baseline: number, unit: string) => {
  table.push([what, `${round(relay)} ${unit}`, `${round(baseline)} ${unit}`, Number.isFinite(relay / baseline) ? `${round(relay / baseline)}×` : "-"])
  return { relay: round(relay, 3), baseline: round(baseline, 3), ratio: round(relay / baseline, 3), unit }
}
const targets: Array<{ target: string; figure: string; met: boolean }> = []
const target = (name: string, met: boolean, figure: string) => targets.push({ target: name, figure, met })

// ---- the database ----

const cleanups: Array<() => Promise<unknown>> = []
const createDatabase = async (serverUrl: string, name: string) => {
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  cleanups.push(async () => {
    const c = new pg.Client({ connectionString: serverUrl })
    await c.connect()
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await c.end()
  })
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return url.toString()
}

const serverUrl = async (): Promise<string> => {
  if (process.env.DATABASE_URL) return process.env.DATABASE_URL
  progress("starting an embedded PostgreSQL (no DATABASE_URL)")
  const scope = Effect.runSync(Scope.make())
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "llm-relay-bench-"))
  const server = await Effect.runPromise(Scope.extend(Embedded.start({ dataDir: dir, ephemeral: true }), scope))
  cleanups.push(async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    Fs.rmSync(dir, { recursive: true, force: true })
  })
  return Redacted.value(server.url)
}

// ---- the parts under test ----

const freePort = () => Effect.runPromise(Embedded.freePort)

const startUpstream = async () => {
  const port = await freePort()
  const proc = await spawnNode(["dist/bench/upstream.js", String(port)], {}, /listening/)
  cleanups.push(proc.stop)
  return { url: `http://127.0.0.1:${port}`, proc }
}

const startBroker = async (databaseUrl: string) => {
  const port = await freePort()
  const proc = await spawnNode(["bin/llm-relay", "serve", "--port", String(port)], {
    DATABASE_URL: databaseUrl,
    RELAY_ADMIN_TOKEN: ADMIN,
    RELAY_DB_MAX_CONNECTIONS: "20"
  }, /Listening on/)
  cleanups.push(proc.stop)
  const url = `http://127.0.0.1:${port}`
  const token = async (role: string) => {
    const answer = await request(`${url}/v1/tokens`, {
      headers: { authorization: `Bearer ${ADMIN}` },
      body: { role, name: `bench-${role}` }
    })
    return (JSON.parse(answer.text) as { token: string }).token
  }
  return { url, proc, token }
}

const startPublisher = async (brokerUrl: string, token: string, upstreamUrl: string) => {
  const proc = await spawnNode([
    "bin/llm-relay",
    "publish",
    "--server",
    brokerUrl,
    "--token",
    token,
    "--provider",
    `name=bench,upstream=${upstreamUrl}/v1,model=bench-upstream,maxConcurrent=128`
  ], {}, /connected to/)
  cleanups.push(proc.stop)
  return proc
}

// ---- scenarios ----

const chat = { model: "bench", messages: [{ role: "user", content: "ping" }] }

const overhead = async (direct: string, relayed: string, headers: Record<string, string>) => {
  progress("overhead: warming up both paths")
  await closedLoop(() => request(direct, { body: chat }), 8, 1000)
  await closedLoop(() => request(relayed, { headers, body: chat }), 8, 2000)
  const out: Record<string, unknown> = {}
  for (const concurrency of [1, 64]) {
    progress(`overhead: concurrency ${concurrency}, ${seconds} s per path`)
    const d = await closedLoop(() => request(direct, { body: chat }), concurrency, seconds * 1000)
    const r = await closedLoop(() => request(relayed, { headers, body: chat }), concurrency, seconds * 1000)
    const ds = summarize(d.latencies)
    const rs = summarize(r.latencies)
    out[`concurrency${concurrency}`] = {
      direct: { ...ds, perSecond: d.perSecond, errors: d.errors },
      relayed: { ...rs, perSecond: r.perSecond, errors: r.errors },
      p50: row(`c=${concurrency} p50 latency`, rs.p50, ds.p50, "ms"),
      p99: row(`c=${concurrency} p99 latency`, rs.p99, ds.p99, "ms"),
      throughput: row(`c=${concurrency} throughput`, r.perSecond, d.perSecond, "req/s")
    }
    if (concurrency === 64) target("≥ 2,000 relayed req/s at concurrency 64", r.perSecond >= 2000, `${round(r.perSecond, 0)} req/s`)
  }
  for (const rate of [100, 500]) {
    progress(`overhead: open loop at ${rate} req/s, ${seconds} s per path`)
    const d = await openLoop(() => request(direct, { body: chat }), rate, seconds * 1000)
    const r = await openLoop(() => request(relayed, { headers, body: chat }), rate, seconds * 1000)
    const ds = summarize(d.latencies)
    const rs = summarize(r.latencies)
    out[`rate${rate}`] = {
      direct: { ...ds, errors: d.errors },
      relayed: { ...rs, errors: r.errors },
      addedP50Ms: round(rs.p50 - ds.p50, 3),
      addedP99Ms: round(rs.p99 - ds.p99, 3),
      p50: row(`${rate}/s p50 latency`, rs.p50, ds.p50, "ms"),
      p90: row(`${rate}/s p90 latency`, rs.p90, ds.p90, "ms"),
      p99: row(`${rate}/s p99 latency`, rs.p99, ds.p99, "ms"),
      max: row(`${rate}/s max latency`, rs.max, ds.max, "ms")
    }
    if (rate === 500) {
      target("added latency p50 ≤ 1 ms at 500 req/s", rs.p50 - ds.p50 <= 1, `+${round(rs.p50 - ds.p50)} ms`)
      target("added latency p99 ≤ 5 ms at 500 req/s", rs.p99 - ds.p99 <= 5, `+${round(rs.p99 - ds.p99)} ms`)
    }
  }
  return out
}

const streaming = async (direct: string, relayed: string, headers: Record<string, string>) => {
  const body = { ...chat, stream: true, max_tokens: 200 }
  const n = quick ? 20 : 100
  progress(`streaming: ${n} sequential 200-chunk answers per path`)
  const sequential = async (url: string, h: Record<string, string>) => {
    const first: Array<number> = []
    const last: Array<number> = []
    for (let i = 0; i < n; i++) {
      const a = await request(url, { headers: h, body })
      if (a.chunks < 200) throw new Error(`a stream came back with ${a.chunks} chunks: ${a.text.slice(0, 300)}`)
      first.push(a.firstMs)
      last.push(a.totalMs)
    }
    return { first: summarize(first), last: summarize(last) }
  }
  await sequential(relayed, headers) // warm-up
  const d = await sequential(direct, {})
  const r = await sequential(relayed, headers)
  progress(`streaming: 50 concurrent streams for ${seconds} s per path`)
  const aggregate = async (url: string, h: Record<string, string>) => {
    let chunks = 0
    let errors = 0
    const started = performance.now()
    const deadline = started + seconds * 1000
    await Promise.all(Array.from({ length: 50 }, async () => {
      while (performance.now() < deadline) {
        const answer = await request(url, { headers: h, body }).catch(() => undefined)
        if (answer === undefined || answer.status !== 200) errors++
        else chunks += answer.chunks - 1 // minus [DONE]
      }
    }))
    if (errors > 0) progress(`streaming: ${errors} stream(s) failed on ${url}`)
    return chunks / ((performance.now() - started) / 1000)
  }
  const da = await aggregate(direct, {})
  const ra = await aggregate(relayed, headers)
  target("time-to-first-chunk overhead ≤ 2 ms", r.first.p50 - d.first.p50 <= 2, `+${round(r.first.p50 - d.first.p50)} ms (p50)`)
  target("≥ 50,000 chunks/s relayed", ra >= 50_000, `${round(ra, 0)} chunks/s`)
  return {
    direct: d,
    relayed: r,
    firstChunkP50: row("stream first chunk p50", r.first.p50, d.first.p50, "ms"),
    lastChunkP50: row("stream last chunk p50", r.last.p50, d.last.p50, "ms"),
    firstChunkP99: row("stream first chunk p99", r.first.p99, d.first.p99, "ms"),
    chunksPerSecond: row("50 streams: chunks/s", ra, da, "chunks/s")
  }
}

const queueCycle = async (server: string) => {
  const tasks = quick ? 2000 : 10_000
  const out: Record<string, unknown> = {}
  for (const claimers of [1, 8]) {
    progress(`queue cycle: ${tasks} tasks, ${claimers} claimer(s), llm-relay TaskQueue`)
    const ours = await relayCycle(await createDatabase(server, `llm_relay_bench_q${claimers}_${Crypto.randomBytes(3).toString("hex")}`), tasks, claimers)
    progress(`queue cycle: ${tasks} jobs, concurrency ${claimers}, graphile-worker`)
    const theirs = await graphileCycle(await createDatabase(server, `llm_relay_bench_g${claimers}_${Crypto.randomBytes(3).toString("hex")}`), tasks, claimers)
    out[`claimers${claimers}`] = {
      relay: ours,
      graphileWorker: theirs,
      throughput: row(`queue cycle ×${claimers} tasks/s (vs graphile-worker)`, ours.perSecond, theirs.perSecond, "tasks/s"),
      p50: row(`queue cycle ×${claimers} p50 (vs graphile-worker)`, ours.latencyMs.p50, theirs.latencyMs.p50, "ms"),
      p99: row(`queue cycle ×${claimers} p99 (vs graphile-worker)`, ours.latencyMs.p99, theirs.latencyMs.p99, "ms")
    }
    target(`queue cycle ≥ graphile-worker (${claimers} claimer${claimers > 1 ? "s" : ""})`, ours.perSecond >= theirs.perSecond,
      `${round(ours.perSecond / theirs.perSecond)}× (${round(ours.perSecond, 0)} vs ${round(theirs.perSecond, 0)} tasks/s)`)
  }
  return out
}

/** An idle publisher session: registered, its task stream open, frames counted. */
const openSession = (brokerUrl: string, token: string, name: string) =>
  new Promise<{ close: () => void; nextTask: () => Promise<number> }>((resolve, reject) => {
    void request(`${brokerUrl}/v1/publishers/sessions`, {
      headers: { authorization: `Bearer ${token}` },
      body: { providers: [{ name, model: "m", maxConcurrent: 1 }] }
    }).then((registered) => {
      if (registered.status !== 200) return reject(new Error(`register: ${registered.status} ${registered.text}`))
      const { sessionId } = JSON.parse(registered.text) as { sessionId: string }
      let onTask: ((at: number) => void) | undefined
      const req = Http.get(`${brokerUrl}/v1/publishers/sessions/${sessionId}/tasks`, {
        headers: { authorization: `Bearer ${token}` }
      }, (res) => {
        res.setEncoding("utf8")
        let ready = false
        res.on("data", (d: string) => {
          if (!ready && d.includes("event: ready")) {
            ready = true
            resolve({ close: () => req.destroy(), nextTask: () => new Promise((r) => (onTask = r)) })
          }
          if (d.includes("event: task")) onTask?.(performance.now())
        })
        res.on("error", () => {})
      })
      req.on("error", () => {})
    }, reject)
  })

const sessionScale = async (brokerUrl: string, brokerPid: number, publisherToken: string, clientToken: string) => {
  const out: Record<string, unknown> = {}
  const baselineRss = rssBytes(brokerPid)
  const open: Array<{ close: () => void; nextTask: () => Promise<number>; name: string }> = []
  for (const target_ of sessionCounts) {
    progress(`session scale: opening ${target_} idle sessions`)
    const openedAt = performance.now()
    while (open.length < target_) {
      const batch = Math.min(64, target_ - open.length)
      const sessions = await Promise.all(Array.from({ length: batch }, (_, i) => {
        const name = `idle-${open.length + i}`
        return openSession(brokerUrl, publisherToken, name).then((s) => ({ ...s, name }))
      }))
      open.push(...sessions)
    }
    const openSeconds = (performance.now() - openedAt) / 1000
    await new Promise((r) => setTimeout(r, 2000))
    const rss = rssBytes(brokerPid)
    const idleWindow = quick ? 5 : 15
    const cpu0 = cpuSeconds(brokerPid)
    await new Promise((r) => setTimeout(r, idleWindow * 1000))
    const cpu = cpuSeconds(brokerPid) - cpu0
    progress(`session scale: time for a task to reach one of ${target_} sessions`)
    const reach: Array<number> = []
    for (let i = 0; i < 20; i++) {
      const session = open[Math.floor((i * open.length) / 20)]!
      const arrived = session.nextTask()
      const t0 = performance.now()
      await request(`${brokerUrl}/v1/tasks`, {
        headers: { authorization: `Bearer ${clientToken}` },
        body: { model: session.name, body: { model: session.name, messages: [] } }
      })
      reach.push((await arrived) - t0)
    }
    const perSessionKiB = (rss - baselineRss) / target_ / 1024
    out[`sessions${target_}`] = {
      sessions: target_,
      openSeconds: round(openSeconds),
      brokerRssMiB: round(rss / 2 ** 20, 1),
      baselineRssMiB: round(baselineRss / 2 ** 20, 1),
      rssPerSessionKiB: round(perSessionKiB, 1),
      idleCpuPercentOfOneCore: round((cpu / idleWindow) * 100, 2),
      idleCpuMicrosecondsPerSessionPerSecond: round((cpu / idleWindow / target_) * 1e6, 2),
      taskReachMs: summarize(reach),
      rss: row(`${target_} idle sessions: broker RSS`, rss / 2 ** 20, baselineRss / 2 ** 20, "MiB"),
      reach: row(`${target_} sessions: task reaches its session p50`, summarize(reach).p50, Number.NaN, "ms")
    }
    const projected = (baselineRss + perSessionKiB * 1024 * 10_000) / 2 ** 30
    target(`10,000 idle sessions < 1 GiB RSS (projected from ${target_})`, projected < 1, `${round(projected, 2)} GiB projected`)
  }
  for (const s of open) s.close()
  return out
}

// ---- the run ----

const main = async () => {
  const started = performance.now()
  const server = await serverUrl()
  const brokerDb = await createDatabase(server, `llm_relay_bench_${Crypto.randomBytes(4).toString("hex")}`)
  progress("starting the fake upstream, the broker and the publisher")
  const upstream = await startUpstream()
  const broker = await startBroker(brokerDb)
  const clientToken = await broker.token("client")
  const publisherToken = await broker.token("publisher")
  const publisher: Spawned = await startPublisher(broker.url, publisherToken, upstream.url)
  const direct = `${upstream.url}/v1/chat/completions`
  const relayed = `${broker.url}/v1/chat/completions`
  const headers = { authorization: `Bearer ${clientToken}` }
  if (only.has("overhead")) results.overhead = await overhead(direct, relayed, headers)
  if (only.has("streaming")) results.streaming = await streaming(direct, relayed, headers)
  await publisher.stop()
  if (only.has("sessions")) {
    results.sessionScale = await sessionScale(broker.url, broker.proc.child.pid!, publisherToken, clientToken)
  }
  await broker.proc.stop()
  if (only.has("queue")) results.queueCycle = await queueCycle(server)
  results.targets = targets
  results.durationSeconds = round((performance.now() - started) / 1000, 1)

  const widths = [0, 1, 2, 3].map((i) => Math.max(...[["figure", "llm-relay", "baseline", "ratio"], ...table].map((r) => r[i]!.length)))
  const line = (r: ReadonlyArray<string>) => r.map((c, i) => c.padEnd(widths[i]!)).join(" | ")
  console.log(`\n${line(["figure", "llm-relay", "baseline", "ratio"])}\n${widths.map((w) => "-".repeat(w)).join("-|-")}`)
  for (const r of table) console.log(line(r))
  console.log("\ntargets:")
  for (const t of targets) console.log(`  ${t.met ? "met   " : "missed"}  ${t.target}: ${t.figure}`)
  const dir = Path.join(ROOT, "bench/results")
  Fs.mkdirSync(dir, { recursive: true })
  const file = Path.join(dir, `${new Date().toISOString().slice(0, 10)}${quick ? "-quick" : ""}.json`)
  Fs.writeFileSync(file, JSON.stringify(results, null, 2) + "\n")
  console.log(`\nresults: ${Path.relative(ROOT, file)} (${results.durationSeconds} s)`)
}

main()
  .catch((error) => {
    console.error(error)
    process.exitCode = 1
  })
  .finally(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {})
    process.exit()
  })
