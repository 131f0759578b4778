/**
 * `npm run bench [-- options]`: llm-relay measured against baselines in the
 * same run, everything on loopback — PostgreSQL (`DATABASE_URL`: a fresh
 * database `llm_relay_bench_<random>` on that server, dropped at the end;
 * unset: an embedded PostgreSQL in a temporary dir), a fake upstream, the
 * broker and the publisher as processes, the load generated here.
 *
 * Options:
 *   --quick                  short phases (under 2 minutes in all)
 *   --only a,b               scenarios: overhead, streaming, queue, sessions, herd
 *   --publisher cli|raw      the project's `llm-relay publish` (default when
 *                            it answers `--help`), or bench/rawPublisher.ts
 *   --sessions 1000,5000     idle session counts (default 1000,5000; quick 200)
 *   --herd-sessions N        sessions sharing one pool in the herd scenario (500)
 *   --seconds N              seconds per load phase (default 10; quick 3)
 *   --check                  the performance guard (bench/check.ts): broker and
 *                            publisher CPU per relayed request after a warm-up,
 *                            calibrated, against bench/results/baseline.json;
 *                            exit 1 when one is over +15%
 *   --write-baseline         with --check: write baseline.json instead
 *   --cpu-prof               run the broker (and a CLI publisher) under
 *                            `node --cpu-prof`; profiles go to
 *                            bench/results/profiles/<time>/ (summarise with
 *                            `node dist/bench/profileTop.js <file>`)
 *
 * Each figure is reported with its baseline and their ratio; a table goes to
 * stdout and everything to bench/results/<date>.json (<date>-quick.json for
 * --quick, so a quick run never overwrites the full run's figures; a run with
 * --only, --seconds or --sessions adds -partial).
 */
import { Effect, Exit, Redacted, Scope } from "effect"
import { spawnSync } from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import pg from "pg"
import * as Embedded from "../src/db/Embedded.js"
import { BASELINE, compare, measure, printVerdicts, readBaseline } from "./check.js"
import {
  calibrate,
  closedLoop,
  cpuSeconds,
  machineBusy,
  openLoop,
  progress,
  request,
  ROOT,
  round,
  rssBytes,
  settle,
  sleep,
  type Spawned,
  spawnNode,
  summarize
} from "./harness.js"
import { herd } from "./herd.js"
import { graphileCycle, relayCycle } from "./queueCycle.js"
import { type IdleSession, openIdleSession, reach, scale } from "./sessionScale.js"

// ---- options ----

const args = process.argv.slice(2)
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined)
const quick = args.includes("--quick")
const cpuProf = args.includes("--cpu-prof")
const sessionCounts = (option("--sessions") ?? (quick ? "200" : "1000,5000")).split(",").map(Number)
const seconds = Number(option("--seconds") ?? (quick ? 3 : 10))
const check = args.includes("--check")
const writeBaseline = args.includes("--write-baseline")
const only = new Set(check ? ["guard"] : (option("--only") ?? "overhead,streaming,queue,sessions,herd").split(","))
const herdSessions = Number(option("--herd-sessions") ?? 500)
const publisherArg = option("--publisher")
const ADMIN = `bench-admin-${Crypto.randomBytes(24).toString("hex")}`
const profileDir = Path.join(ROOT, "bench/results/profiles", new Date().toISOString().replace(/[:.]/g, "-"))

/** `cli` unless `llm-relay publish --help` fails (the command not built yet): then the raw publisher. */
const publisherKind = (): "cli" | "raw" => {
  if (publisherArg === "cli" || publisherArg === "raw") return publisherArg
  if (publisherArg !== undefined) throw new Error(`--publisher must be cli or raw, got '${publisherArg}'`)
  const help = spawnSync(process.execPath, ["bin/llm-relay", "publish", "--help"], {
    cwd: ROOT,
    timeout: 30_000,
    encoding: "utf8"
  })
  return help.status === 0 && /--provider/.test(help.stdout) ? "cli" : "raw"
}

const gitRevision = () => {
  const head = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).stdout.trim()
  const dirty = spawnSync("git", ["status", "--porcelain", "--", "src", "migrations"], { cwd: ROOT, encoding: "utf8" })
    .stdout.trim()
  return head + (dirty.length > 0 ? " (src changed since)" : "")
}

// ---- results ----

const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  mode: quick ? "quick" : "full",
  revision: gitRevision(),
  machine: {
    cpus: Os.cpus().length,
    model: Os.cpus()[0]?.model,
    node: process.version,
    memoryGiB: round(Os.totalmem() / 2 ** 30, 1),
    loadAverageAtStart: Os.loadavg().map((n) => round(n))
  }
}
type Cell = [string, string, string, string, string]
const table: Array<Cell | string> = []
const fmt = (n: number, unit: string) => {
  if (!Number.isFinite(n)) return "-"
  const digits = Math.abs(n) >= 100 ? 0 : Math.abs(n) >= 10 ? 1 : 2
  return `${n.toFixed(digits)} ${unit}`
}
/** One figure: llm-relay's, its baseline's, their ratio and (for latencies) the difference. */
const figure = (
  what: string,
  relay: number,
  baseline: number,
  unit: string,
  options: { diff?: boolean; prefix?: string } = {}
) => {
  const ratio = relay / baseline
  table.push([
    what,
    (options.prefix ?? "") + fmt(relay, unit),
    fmt(baseline, unit),
    Number.isFinite(ratio) ? `${ratio.toFixed(ratio >= 100 ? 0 : 2)}×` : "-",
    options.diff === true && Number.isFinite(relay - baseline)
      ? `${relay - baseline >= 0 ? "+" : ""}${fmt(relay - baseline, unit)}`
      : ""
  ])
  return {
    relay: round(relay, 3),
    baseline: round(baseline, 3),
    ratio: round(ratio, 3),
    ...(options.diff === true ? { difference: round(relay - baseline, 3) } : {}),
    unit
  }
}
const section = (title: string) => table.push(title)
const targets: Array<{ target: string; figure: string; met: boolean }> = []
const target = (name: string, met: boolean, value: string) => targets.push({ target: name, figure: value, met })

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

const serverUrl = async (): Promise<{ url: string; kind: string }> => {
  if (process.env.DATABASE_URL) return { url: process.env.DATABASE_URL, kind: "DATABASE_URL" }
  progress("starting an embedded PostgreSQL (no DATABASE_URL)")
  const scope = Effect.runSync(Scope.make())
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "llm-relay-bench-"))
  const server = await Effect.runPromise(Scope.extend(Embedded.start({ dataDir: dir, ephemeral: true }), scope))
  cleanups.push(async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    Fs.rmSync(dir, { recursive: true, force: true })
  })
  return { url: Redacted.value(server.url), kind: "embedded" }
}

// ---- the parts under test ----

const freePort = () => Effect.runPromise(Embedded.freePort)
const profileFlags = () => {
  if (!cpuProf) return []
  Fs.mkdirSync(profileDir, { recursive: true })
  return ["--cpu-prof", "--cpu-prof-dir", profileDir]
}

const startUpstream = async () => {
  const port = await freePort()
  const proc = await spawnNode(["dist/bench/upstream.js", String(port)], {}, /listening/)
  cleanups.push(proc.stop)
  return { url: `http://127.0.0.1:${port}`, proc }
}

interface Broker {
  readonly url: string
  readonly proc: Spawned
  readonly pid: number
}

const startBroker = async (databaseUrl: string): Promise<Broker> => {
  const port = await freePort()
  const proc = await spawnNode([...profileFlags(), "bin/llm-relay", "serve", "--port", String(port)], {
    DATABASE_URL: databaseUrl,
    RELAY_ADMIN_TOKEN: ADMIN,
    RELAY_DB_MAX_CONNECTIONS: "20",
    // one bench token stands for many users (500 sessions, thousands of calls): the per-principal limits step aside
    RELAY_LIMIT_TASK_STREAMS: "100000",
    RELAY_LIMIT_WAITING: "100000",
    RELAY_LIMIT_LLMS: "100000",
    RELAY_LIMIT_PENDING: "10000000"
  }, /Listening on/)
  cleanups.push(proc.stop)
  return { url: `http://127.0.0.1:${port}`, proc, pid: proc.child.pid! }
}

const makeToken = async (brokerUrl: string, role: string) => {
  const answer = await request(`${brokerUrl}/v1/tokens`, {
    headers: { authorization: `Bearer ${ADMIN}` },
    body: { role, name: `bench-${role}` }
  })
  if (answer.status !== 201) throw new Error(`POST /v1/tokens answered ${answer.status}: ${answer.text}`)
  return (JSON.parse(answer.text) as { token: string }).token
}

/** Until the LLM `name` is listed active (the publisher's task stream is open). */
const waitActive = async (brokerUrl: string, token: string, name: string, publisher: Spawned) => {
  const deadline = performance.now() + 60_000
  while (performance.now() < deadline) {
    const answer = await request(`${brokerUrl}/v1/llms`, { headers: { authorization: `Bearer ${token}` } })
    const llms = answer.status === 200
      ? (JSON.parse(answer.text) as { data: Array<{ name: string; status: string }> }).data
      : []
    if (llms.some((l) => l.name === name && l.status === "active")) return
    if (publisher.child.exitCode !== null) break
    await sleep(100)
  }
  throw new Error(`the publisher did not come online:\n${publisher.output}`)
}

const startPublisher = async (
  kind: "cli" | "raw",
  brokerUrl: string,
  token: string,
  upstreamUrl: string,
  clientToken: string
) => {
  const provider = `name=bench,upstream=${upstreamUrl}/v1,model=bench-upstream,maxConcurrent=64`
  const proc = kind === "cli"
    // --quiet: no log line per task (thousands a second would be the publisher's main cost)
    ? await spawnNode(
      [
        ...profileFlags(),
        "bin/llm-relay",
        "publish",
        "--quiet",
        "--server",
        brokerUrl,
        "--token",
        token,
        "--provider",
        provider
      ],
      {},
      /^/
    )
    : await spawnNode(
      ["dist/bench/rawPublisher.js", "--server", brokerUrl, "--token", token, "--provider", provider],
      {},
      /connected to/
    )
  cleanups.push(proc.stop)
  await waitActive(brokerUrl, clientToken, "bench", proc)
  return proc
}

// ---- scenarios ----

const chat = { model: "bench", messages: [{ role: "user", content: "ping" }] }
const chatText = JSON.stringify(chat)

/** 1. Non-streaming overhead: the same request straight to the upstream and through broker + publisher. */
interface Meters {
  /** pids of the broker, the publisher and the upstream */
  readonly broker: number
  readonly publisher: number
  readonly upstream: number
  /** PostgreSQL transactions committed or rolled back so far in the broker's database */
  readonly transactions: () => Promise<number>
  /** CPU seconds so far of the PostgreSQL backends connected to the broker's database */
  readonly postgresCpu: () => Promise<Map<number, number>>
}

const overhead = async (
  direct: string,
  relayed: string,
  headers: Record<string, string>,
  busy: ReadonlyArray<number>,
  meters: Meters
) => {
  section("1. overhead, non-streaming (llm-relay = through broker+publisher, baseline = straight to the upstream)")
  progress("overhead: warming up both paths")
  await closedLoop(() => request(direct, { body: chatText }), 8, 1000)
  await closedLoop(() => request(relayed, { headers, body: chatText, timeoutMs: 30_000 }), 8, 2000)
  await settle(busy)
  const out: Record<string, unknown> = {}
  for (const concurrency of [1, 64]) {
    progress(`overhead: closed loop, concurrency ${concurrency}, ${seconds} s per path`)
    const up0 = cpuSeconds(meters.upstream)
    const d = await closedLoop(() => request(direct, { body: chatText }), concurrency, seconds * 1000)
    const directCpu = cpuSeconds(meters.upstream) - up0
    const before = [meters.broker, meters.publisher, meters.upstream].map(cpuSeconds)
    const tx0 = await meters.transactions()
    const pg0 = await meters.postgresCpu()
    const r = await closedLoop(
      () => request(relayed, { headers, body: chatText, timeoutMs: 60_000 }),
      concurrency,
      seconds * 1000
    )
    const [brokerCpu, publisherCpu, upstreamCpu] = [meters.broker, meters.publisher, meters.upstream].map((pid, i) =>
      cpuSeconds(pid) - before[i]!
    )
    // per backend; one that started meanwhile counts whole, one that ended is lost (rare: the pool is warm)
    let postgresCpu = 0
    for (const [pid, cpuNow] of await meters.postgresCpu()) postgresCpu += cpuNow - (pg0.get(pid) ?? 0)
    await settle(busy)
    await sleep(1500) // PostgreSQL publishes a backend's counters within a second of it going idle
    const transactions = (await meters.transactions()) - tx0
    const relayedN = r.latencies.length + r.errors
    const cpu = {
      brokerMsPerRequest: round((brokerCpu! * 1000) / relayedN, 3),
      publisherMsPerRequest: round((publisherCpu! * 1000) / relayedN, 3),
      upstreamMsPerRequest: round((upstreamCpu! * 1000) / relayedN, 3),
      postgresMsPerRequest: round((postgresCpu * 1000) / relayedN, 3),
      directUpstreamMsPerRequest: round((directCpu * 1000) / d.latencies.length, 3),
      postgresTransactionsPerRequest: round(transactions / relayedN, 2)
    }
    const ds = summarize(d.latencies)
    const rs = summarize(r.latencies)
    out[`concurrency${concurrency}`] = {
      direct: { ...ds, perSecond: d.perSecond, errors: d.errors },
      relayed: { ...rs, perSecond: r.perSecond, errors: r.errors },
      p50: figure(`c=${concurrency} latency p50`, rs.p50, ds.p50, "ms", { diff: true }),
      p90: figure(`c=${concurrency} latency p90`, rs.p90, ds.p90, "ms", { diff: true }),
      p99: figure(`c=${concurrency} latency p99`, rs.p99, ds.p99, "ms", { diff: true }),
      max: figure(`c=${concurrency} latency max`, rs.max, ds.max, "ms", { diff: true }),
      throughput: figure(`c=${concurrency} throughput`, r.perSecond, d.perSecond, "req/s"),
      cpu,
      cpuPerRequest: figure(
        `c=${concurrency} CPU per request (all servers)`,
        cpu.brokerMsPerRequest + cpu.publisherMsPerRequest + cpu.upstreamMsPerRequest + cpu.postgresMsPerRequest,
        cpu.directUpstreamMsPerRequest,
        "ms"
      ),
      brokerCpuPerRequest: figure(`c=${concurrency} broker CPU per request`, cpu.brokerMsPerRequest, Number.NaN, "ms"),
      publisherCpuPerRequest: figure(
        `c=${concurrency} publisher CPU per request`,
        cpu.publisherMsPerRequest,
        Number.NaN,
        "ms"
      ),
      postgresCpuPerRequest: figure(
        `c=${concurrency} PostgreSQL CPU per request`,
        cpu.postgresMsPerRequest,
        Number.NaN,
        "ms"
      ),
      statementsPerRequest: figure(
        `c=${concurrency} PostgreSQL transactions per request`,
        cpu.postgresTransactionsPerRequest,
        Number.NaN,
        ""
      )
    }
    if (r.errors > 0) progress(`overhead: ${r.errors} relayed request(s) failed at concurrency ${concurrency}`)
    if (concurrency === 64) {
      target("≥ 2,000 relayed req/s at concurrency 64", r.perSecond >= 2000, `${round(r.perSecond, 0)} req/s`)
    }
  }
  // A request gives up this long after its scheduled moment (the broker cancels its task).
  const timeoutMs = quick ? 5_000 : 20_000
  for (const rate of [100, 500]) {
    progress(`overhead: open loop at ${rate} req/s, ${seconds} s per path (give up after ${timeoutMs / 1000} s)`)
    const d = await openLoop((t) => request(direct, { body: chatText, timeoutMs: t }), rate, seconds * 1000, timeoutMs)
    const r = await openLoop(
      (t) => request(relayed, { headers, body: chatText, timeoutMs: t }),
      rate,
      seconds * 1000,
      timeoutMs
    )
    await settle(busy)
    const ds = summarize(d.latencies)
    const rs = summarize(r.latencies)
    const prefix = r.timedOut > 0 ? "≥ " : ""
    out[`rate${rate}`] = {
      direct: { ...ds, ...d, latencies: undefined },
      relayed: { ...rs, ...r, latencies: undefined },
      p50: figure(`${rate}/s latency p50`, rs.p50, ds.p50, "ms", { diff: true, prefix }),
      p90: figure(`${rate}/s latency p90`, rs.p90, ds.p90, "ms", { diff: true, prefix }),
      p99: figure(`${rate}/s latency p99`, rs.p99, ds.p99, "ms", { diff: true, prefix }),
      max: figure(`${rate}/s latency max`, rs.max, ds.max, "ms", { diff: true, prefix }),
      served: figure(`${rate}/s served rate`, r.perSecond, d.perSecond, "req/s")
    }
    if (r.timedOut + r.errors > 0) {
      progress(
        `overhead: at ${rate}/s, ${r.timedOut} relayed request(s) timed out and ${r.errors} failed of ${
          Math.round(rate * seconds)
        }`
      )
    }
    if (d.lateSends + r.lateSends > 0) {
      progress(`overhead: the load generator sent ${d.lateSends + r.lateSends} request(s) > 5 ms late`)
    }
    if (rate === 500) {
      target("added latency p50 ≤ 1 ms at 500 req/s", rs.p50 - ds.p50 <= 1, `${prefix}+${round(rs.p50 - ds.p50)} ms`)
      target("added latency p99 ≤ 5 ms at 500 req/s", rs.p99 - ds.p99 <= 5, `${prefix}+${round(rs.p99 - ds.p99)} ms`)
    }
  }
  return out
}

/** 2. Streaming: time to first and last chunk of a 200-chunk answer; aggregate chunks/s with 50 streams. */
const streaming = async (
  direct: string,
  relayed: string,
  headers: Record<string, string>,
  busy: ReadonlyArray<number>
) => {
  section("2. streaming, 200-chunk answers (llm-relay = relayed, baseline = straight to the upstream)")
  const body = JSON.stringify({ ...chat, stream: true, max_tokens: 200 })
  const n = quick ? 20 : 100
  progress(`streaming: ${n} sequential 200-chunk answers per path`)
  const sequential = async (url: string, h: Record<string, string>) => {
    const first: Array<number> = []
    const last: Array<number> = []
    for (let i = 0; i < n; i++) {
      const a = await request(url, { headers: h, body, timeoutMs: 30_000 })
      if (a.chunks < 201 || !a.text.includes("data: [DONE]")) {
        throw new Error(`a stream came back with ${a.chunks} data lines (status ${a.status}): ${a.text.slice(0, 300)}`)
      }
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
    let streams = 0
    const started = performance.now()
    const deadline = started + seconds * 1000
    await Promise.all(Array.from({ length: 50 }, async () => {
      while (performance.now() < deadline) {
        const answer = await request(url, { headers: h, body, timeoutMs: 60_000 }).catch(() => undefined)
        if (answer === undefined || answer.status !== 200 || !answer.text.includes("data: [DONE]")) errors++
        else {
          chunks += answer.chunks - 1 // [DONE] is not a chunk
          streams++
        }
      }
    }))
    if (errors > 0) progress(`streaming: ${errors} stream(s) failed on ${url}`)
    return { chunksPerSecond: chunks / ((performance.now() - started) / 1000), streams, errors }
  }
  const da = await aggregate(direct, {})
  const ra = await aggregate(relayed, headers)
  await settle(busy)
  target(
    "time-to-first-chunk overhead ≤ 2 ms",
    r.first.p50 - d.first.p50 <= 2,
    `+${round(r.first.p50 - d.first.p50)} ms (p50)`
  )
  target("≥ 50,000 chunks/s relayed", ra.chunksPerSecond >= 50_000, `${round(ra.chunksPerSecond, 0)} chunks/s`)
  return {
    direct: d,
    relayed: r,
    firstChunkP50: figure("first chunk p50", r.first.p50, d.first.p50, "ms", { diff: true }),
    firstChunkP99: figure("first chunk p99", r.first.p99, d.first.p99, "ms", { diff: true }),
    lastChunkP50: figure("last chunk p50", r.last.p50, d.last.p50, "ms", { diff: true }),
    lastChunkP99: figure("last chunk p99", r.last.p99, d.last.p99, "ms", { diff: true }),
    aggregate: { direct: da, relayed: ra },
    chunksPerSecond: figure("50 streams: chunks/s", ra.chunksPerSecond, da.chunksPerSecond, "chunks/s")
  }
}

/** 3. The queue cycle without HTTP, against graphile-worker on the same PostgreSQL server. */
const queueCycle = async (server: string) => {
  section(
    "3. queue cycle enqueue → claim → complete, no HTTP (baseline = graphile-worker, same concurrency, same server)"
  )
  const tasks = quick ? 600 : 10_000
  const fresh = async (prefix: string) =>
    createDatabase(server, `llm_relay_bench_${prefix}_${Crypto.randomBytes(3).toString("hex")}`)
  const out: Record<string, unknown> = {}
  const theirs = new Map<number, Awaited<ReturnType<typeof graphileCycle>>>()
  for (const concurrency of [1, 8]) {
    progress(`queue cycle: ${tasks} jobs, graphile-worker concurrency ${concurrency}`)
    theirs.set(concurrency, await graphileCycle(await fresh(`g${concurrency}`), tasks, concurrency))
  }
  const variants = [
    { key: "claimers1", label: "1 claimer", claimers: 1, capacity: 1 },
    { key: "claimers8", label: "8 claimers", claimers: 8, capacity: 1 },
    { key: "claimers1x8", label: "1 claimer, batch 8", claimers: 1, capacity: 8 }
  ]
  for (const v of variants) {
    const concurrency = v.claimers * v.capacity
    progress(`queue cycle: ${tasks} tasks, llm-relay TaskQueue, ${v.claimers} session(s) × maxConcurrent ${v.capacity}`)
    const ours = await relayCycle(await fresh(`q${v.claimers}x${v.capacity}`), tasks, v.claimers, v.capacity)
    const base = theirs.get(concurrency)!
    out[v.key] = {
      claimers: v.claimers,
      capacityPerClaimer: v.capacity,
      relay: ours,
      graphileWorker: base,
      throughput: figure(`${v.label}: tasks/s`, ours.perSecond, base.perSecond, "tasks/s"),
      p50: figure(`${v.label}: enqueue→done p50`, ours.latencyMs.p50, base.latencyMs.p50, "ms", { diff: true }),
      p99: figure(`${v.label}: enqueue→done p99`, ours.latencyMs.p99, base.latencyMs.p99, "ms", { diff: true })
    }
    target(
      `queue cycle ≥ graphile-worker (${v.label})`,
      ours.perSecond >= base.perSecond,
      `${round(ours.perSecond / base.perSecond)}× (${round(ours.perSecond, 0)} vs ${round(base.perSecond, 0)} tasks/s)`
    )
  }
  return out
}

/** 4. Idle sessions on a freshly started broker. */
const sessionScale = async (brokerDb: string) => {
  section("4. session scale (baseline = the same broker with no idle sessions / with one)")
  progress("session scale: a fresh broker for a clean memory baseline")
  const broker = await startBroker(brokerDb)
  const publisherToken = await makeToken(broker.url, "publisher")
  const clientToken = await makeToken(broker.url, "client")
  await sleep(2000)
  const baselineRss = rssBytes(broker.pid)
  const idleWindow = quick ? 4 : 15
  const baselineWindow = quick ? 2 : idleWindow
  const cpu0 = cpuSeconds(broker.pid)
  await sleep(baselineWindow * 1000)
  const baselineIdleCpu = (cpuSeconds(broker.pid) - cpu0) / baselineWindow
  const open: Array<IdleSession> = [await openIdleSession(broker.url, publisherToken, "idle-0")]
  const reachCount = quick ? 10 : 20
  progress("session scale: time for a task to reach the only session")
  const reachOne = await reach(broker.url, clientToken, open, reachCount)
  const steps = await scale({
    brokerUrl: broker.url,
    brokerPid: broker.pid,
    publisherToken,
    clientToken,
    counts: sessionCounts,
    idleWindowSeconds: idleWindow,
    reachCount,
    baselineRss,
    open,
    onProgress: progress
  })
  const out: Record<string, unknown> = {
    baselineRssMiB: round(baselineRss / 2 ** 20, 1),
    baselineIdleCpuPercentOfOneCore: round(baselineIdleCpu * 100, 2),
    taskReachWithOneSessionMs: reachOne
  }
  for (const step of steps) {
    out[`sessions${step.sessions}`] = {
      ...step,
      rss: figure(`${step.sessions} sessions: broker RSS`, step.rssMiB, baselineRss / 2 ** 20, "MiB"),
      rssPerSession: figure(`${step.sessions} sessions: RSS per session`, step.rssPerSessionKiB, Number.NaN, "KiB"),
      quietCpu: figure(
        `${step.sessions} sessions: CPU, keepalives only`,
        step.quietCpuPercentOfOneCore,
        baselineIdleCpu * 100,
        "% core"
      ),
      idleCpu: figure(
        `${step.sessions} sessions: CPU, heartbeating`,
        step.idleCpuPercentOfOneCore,
        baselineIdleCpu * 100,
        "% core"
      ),
      idleCpuPerSession: figure(
        `${step.sessions} sessions: CPU per heartbeating session`,
        step.idleCpuMicrosecondsPerSessionPerSecond,
        Number.NaN,
        "µs/s"
      ),
      cpuPerHeartbeat: figure(`${step.sessions} sessions: CPU per heartbeat`, step.cpuMsPerHeartbeat, Number.NaN, "ms"),
      openCpuPerSession: figure(
        `${step.sessions} sessions: CPU to open one`,
        step.openCpuMsPerSession,
        Number.NaN,
        "ms"
      ),
      reachP50: figure(`${step.sessions} sessions: task reaches it p50`, step.taskReachMs.p50, reachOne.p50, "ms", {
        diff: true
      }),
      reachP99: figure(`${step.sessions} sessions: task reaches it p99`, step.taskReachMs.p99, reachOne.p99, "ms", {
        diff: true
      })
    }
  }
  const last = steps[steps.length - 1]
  if (last !== undefined) {
    const projected = (baselineRss + last.rssPerSessionKiB * 1024 * 10_000) / 2 ** 30
    const measured = last.sessions >= 10_000
    target(
      `10,000 idle sessions < 1 GiB broker RSS (${measured ? "measured" : `projected from ${last.sessions}`})`,
      (measured ? last.rssMiB / 1024 : projected) < 1,
      measured ? `${round(last.rssMiB / 1024, 2)} GiB at ${last.sessions}` : `${round(projected, 2)} GiB projected`
    )
  }
  progress("session scale: closing the sessions")
  for (const s of open) s.close()
  await broker.proc.stop()
  return out
}

/** 5. Wake-ups in a big pool: enqueues to a pool of many idle sessions against a pool of one. */
const herdScenario = async (brokerDb: string) => {
  section(`5. enqueues to a pool of ${herdSessions} idle sessions (baseline = a pool of one session, same broker)`)
  progress("herd: a fresh broker")
  const broker = await startBroker(brokerDb)
  const publisherToken = await makeToken(broker.url, "publisher")
  const clientToken = await makeToken(broker.url, "client")
  const enqueues = 100
  const { many, one } = await herd({
    brokerUrl: broker.url,
    databaseUrl: brokerDb,
    publisherToken,
    clientToken,
    sessions: herdSessions,
    enqueues,
    onProgress: progress
  })
  const out: Record<string, unknown> = { enqueues, one, many }
  for (const key of ["oneByOne", "burst"] as const) {
    const label = key === "oneByOne" ? "one by one" : `${enqueues} at once`
    out[key] = {
      transactionsPerEnqueue: figure(
        `${label}: transactions per enqueue`,
        many[key].transactionsPerEnqueue,
        one[key].transactionsPerEnqueue,
        ""
      ),
      enqueueP50: figure(`${label}: POST /v1/tasks p50`, many[key].enqueueMs.p50, one[key].enqueueMs.p50, "ms", {
        diff: true
      }),
      enqueueP99: figure(`${label}: POST /v1/tasks p99`, many[key].enqueueMs.p99, one[key].enqueueMs.p99, "ms", {
        diff: true
      })
    }
    if (many[key].failed > 0) progress(`herd: ${many[key].failed} post(s) ${label} failed or timed out`)
  }
  await broker.proc.stop()
  return out
}

// ---- the run ----

const printTable = () => {
  const start = results.machineAtStart as { busyFraction: number; calibration: { wallMs: number; cpuMs: number } }
  console.log(
    `\nmachine: ${Os.cpus().length} × ${Os.cpus()[0]?.model}, node ${process.version}; ` +
      `busy ${
        Math.round(start.busyFraction * 100)
      }% before start; calibration ${start.calibration.cpuMs} ms CPU / ${start.calibration.wallMs} ms wall`
  )
  const cells = table.filter((r): r is Cell => typeof r !== "string")
  const header: Cell = ["figure", "llm-relay", "baseline", "ratio", "difference"]
  const widths = header.map((_, i) => Math.max(...[header, ...cells].map((r) => r[i]!.length)))
  const line = (r: ReadonlyArray<string>) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")
  console.log(`\n${line(header)}`)
  for (const r of table) {
    if (typeof r === "string") console.log(`\n${r}\n${widths.map((w) => "-".repeat(w)).join("-|-")}`)
    else console.log(line(r))
  }
  console.log("\nissue 6 targets:")
  for (const t of targets) console.log(`  ${t.met ? "met   " : "MISSED"}  ${t.target}: ${t.figure}`)
}

const main = async () => {
  const started = performance.now()
  const kind = publisherKind()
  const server = await serverUrl()
  results.database = server.kind
  results.publisher = kind
  results.settings = { secondsPerPhase: seconds, sessionCounts, cpuProf }
  progress(
    `mode ${
      check ? "check" : quick ? "quick" : "full"
    }, publisher ${kind}, database ${server.kind}, ${seconds} s per load phase`
  )
  // Everything here shares the machine's cores: say how busy it was before we started.
  const otherLoad = await machineBusy(1000)
  const calibration = calibrate()
  results.machineAtStart = { busyFraction: round(otherLoad), calibration }
  if (otherLoad > 0.1) {
    progress(
      `warning: the machine was ${
        Math.round(otherLoad * 100)
      }% busy before the bench started (other processes); figures will be slower and noisier`
    )
  }
  if (check && otherLoad > 0.2 && !args.includes("--force")) {
    // Contention inflates CPU per request (2-3× measured with a test suite running
    // beside it), and the calibration loop does not take that out: a busy
    // machine's figures would be false alarms, or a false baseline.
    progress(
      "the guard needs a quiet machine (other processes used more than 20% of the CPUs); stop them, or pass --force"
    )
    process.exitCode = 2
    return
  }
  const brokerDb = await createDatabase(server.url, `llm_relay_bench_${Crypto.randomBytes(4).toString("hex")}`)
  if (only.has("overhead") || only.has("streaming") || only.has("guard")) {
    progress(`starting the fake upstream, the broker and the ${kind} publisher`)
    const upstream = await startUpstream()
    const broker = await startBroker(brokerDb)
    const clientToken = await makeToken(broker.url, "client")
    const publisherToken = await makeToken(broker.url, "publisher")
    const publisher = await startPublisher(kind, broker.url, publisherToken, upstream.url, clientToken)
    const direct = `${upstream.url}/v1/chat/completions`
    const relayed = `${broker.url}/v1/chat/completions`
    const headers = { authorization: `Bearer ${clientToken}` }
    const busy = [broker.pid, publisher.child.pid!]
    const stats = new pg.Client({ connectionString: brokerDb })
    await stats.connect()
    cleanups.push(() => stats.end())
    const meters: Meters = {
      broker: broker.pid,
      publisher: publisher.child.pid!,
      upstream: upstream.proc.child.pid!,
      transactions: async () => {
        const r = await stats.query(
          "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()"
        )
        return Number((r.rows[0] as { n: string }).n)
      },
      postgresCpu: async () => {
        const r = await stats.query(
          "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        const cpu = new Map<number, number>()
        for (const row of r.rows as Array<{ pid: number }>) {
          try {
            cpu.set(row.pid, cpuSeconds(row.pid))
          } catch {
            // a backend that ended meanwhile, or one we cannot read (a server on another host): not counted
          }
        }
        return cpu
      }
    }
    const cpuAtStart = busy.map(cpuSeconds)
    if (only.has("guard")) {
      const streamBody = JSON.stringify({ ...chat, stream: true, max_tokens: 200 })
      results.guard = await measure(
        {
          sendRequest: () => request(relayed, { headers, body: chatText, timeoutMs: 60_000 }),
          sendStream: () => request(relayed, { headers, body: streamBody, timeoutMs: 60_000 }),
          broker: broker.pid,
          publisher: publisher.child.pid!
        },
        {
          minWarmupSeconds: 60,
          warmupSeconds: 120,
          rounds: Number(option("--rounds") ?? (writeBaseline ? 9 : 3)),
          secondsPerPhase: 6
        },
        writeBaseline ? undefined : readBaseline()
      )
    }
    if (only.has("overhead")) results.overhead = await overhead(direct, relayed, headers, busy, meters)
    if (only.has("streaming")) results.streaming = await streaming(direct, relayed, headers, busy)
    results.processCpuSeconds = {
      broker: round(cpuSeconds(broker.pid) - cpuAtStart[0]!),
      publisher: round(cpuSeconds(publisher.child.pid!) - cpuAtStart[1]!)
    }
    results.brokerRssAfterLoadMiB = round(rssBytes(broker.pid) / 2 ** 20, 1)
    await publisher.stop()
    await broker.proc.stop()
    await upstream.proc.stop()
  }
  if (only.has("queue")) results.queueCycle = await queueCycle(server.url)
  if (only.has("sessions")) results.sessionScale = await sessionScale(brokerDb)
  if (only.has("herd")) {
    results.herd = await herdScenario(
      await createDatabase(server.url, `llm_relay_bench_herd_${Crypto.randomBytes(3).toString("hex")}`)
    )
  }
  results.machineAtEnd = { calibration: calibrate(), loadAverage: Os.loadavg().map((n) => round(n)) }
  results.targets = targets
  results.durationSeconds = round((performance.now() - started) / 1000, 1)
  if (cpuProf) {
    results.profiles = Fs.existsSync(profileDir)
      ? Fs.readdirSync(profileDir).map((f) => Path.relative(ROOT, Path.join(profileDir, f)))
      : []
  }

  if (check) return finishCheck()
  printTable()
  const dir = Path.join(ROOT, "bench/results")
  Fs.mkdirSync(dir, { recursive: true })
  // a run of some scenarios only, or of other phase lengths, does not overwrite a whole run's figures
  const partial = option("--only") !== undefined || option("--seconds") !== undefined ||
    option("--sessions") !== undefined || option("--herd-sessions") !== undefined
  const file = Path.join(
    dir,
    `${new Date().toISOString().slice(0, 10)}${quick ? "-quick" : ""}${partial ? "-partial" : ""}.json`
  )
  Fs.writeFileSync(file, JSON.stringify(results, null, 2) + "\n")
  console.log(`\nresults: ${Path.relative(ROOT, file)} (${results.durationSeconds} s)`)
  if (cpuProf) console.log(`profiles: ${(results.profiles as Array<string>).join(", ")}`)
}

/** `--check`: compare with the baseline (exit 1 on a regression), or write it. */
const finishCheck = () => {
  const figures = results.guard as Awaited<ReturnType<typeof measure>>
  if (writeBaseline) {
    const { date, revision, machine, machineAtStart } = results
    Fs.writeFileSync(BASELINE, JSON.stringify({ date, revision, machine, machineAtStart, ...figures }, null, 2) + "\n")
    console.log(`\nbaseline written: ${Path.relative(ROOT, BASELINE)}`)
    for (const [key, value] of Object.entries(figures.raw)) {
      console.log(
        `  ${key}: ${value.toFixed(3)} ms (${figures.normalized[key as keyof typeof figures.raw]} calibrated)`
      )
    }
    return
  }
  const baseline = readBaseline()
  const verdicts = compare(figures, baseline)
  printVerdicts(figures, baseline, verdicts)
  const dir = Path.join(ROOT, "bench/results")
  Fs.writeFileSync(Path.join(dir, "check-last.json"), JSON.stringify({ ...results, verdicts }, null, 2) + "\n")
  if (verdicts.some((v) => !v.pass)) {
    console.log("\nthe guard FAILED: a figure is more than 15% above the baseline")
    process.exitCode = 1
  } else console.log("\nthe guard passed")
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
