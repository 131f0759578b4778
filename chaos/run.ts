/**
 * The chaos scenario as one function: a real broker (`bin/llm-relay serve`),
 * real publishers (`bin/llm-relay publish`, each with a fake vLLM) and raw
 * protocol-level publishers on one pool; client load through the `openai`
 * SDK; faults on a schedule drawn from the seed (SIGKILL + restart with the
 * same session id, dropped streams whose work keeps posting, injected
 * upstream 500/429, slow streams); then a drain and the invariants.
 * `chaos/main.ts` (npm run chaos) and `test/chaos/chaos.test.ts` both call it.
 */
import { Effect, Exit, Redacted, Scope } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import pg from "pg"
import * as Embedded from "../src/db/Embedded.js"
import { sleep } from "./answer.js"
import { type CallRecord, runLoad } from "./clients.js"
import { check, type Invariant, lateAccepted, type Rate, type TaskRow, TERMINAL } from "./invariants.js"
import { derive } from "./prng.js"
import { type RelayProcess, spawnRelay } from "./processes.js"
import { ChaosRawPublisher } from "./rawPublisher.js"
import { type FakeVllm, startFakeVllm } from "./upstream.js"

export interface ChaosOptions {
  readonly seed: number
  /** Seconds of load (faults run during it). */
  readonly seconds: number
  /** A PostgreSQL server: the run makes a fresh database on it and drops it at the end. None: an embedded server. */
  readonly serverUrl?: string | undefined
  readonly clients?: number
  readonly cliPublishers?: number
  readonly rawPublishers?: number
  /** The success rate a run must reach; undefined: reported only (the short run in `npm test`). */
  readonly threshold?: number | undefined
  /** A call not settled this long after it started counts as hung. */
  readonly callDeadlineMs?: number
  readonly log?: (line: string) => void
}

export interface Fault {
  readonly atMs: number
  readonly kind: "kill" | "drop"
  readonly target: string
  readonly downMs: number
}

export interface ChaosReport {
  readonly seed: number
  readonly ok: boolean
  readonly invariants: ReadonlyArray<Invariant>
  readonly rate: Rate
  readonly calls: ReadonlyArray<CallRecord>
  readonly faults: ReadonlyArray<Fault>
  /** The summary table, as printed. */
  readonly table: ReadonlyArray<string>
}

export const POOL = "chaos"

/** The fault schedule: a pure function of the seed and the run's length. */
export const schedule = (seed: number, seconds: number, targets: ReadonlyArray<string>): Array<Fault> => {
  const rng = derive(seed, "faults")
  const busyUntil = new Map<string, number>(targets.map((t) => [t, 0]))
  const faults: Array<Fault> = []
  for (let t = rng.int(1000, 2500); t < seconds * 1000 - 1500;) {
    const free = targets.filter((target) => busyUntil.get(target)! <= t)
    if (free.length === 0) {
      t += 500
      continue
    }
    const target = rng.pick(free)
    const downMs = rng.int(200, 2000)
    faults.push({ atMs: t, kind: target.startsWith("cli") ? "kill" : "drop", target, downMs })
    // the next fault on the same member comes after it is back (a restart takes ~1 s)
    busyUntil.set(target, t + downMs + 3000)
    t += rng.int(700, 2500)
  }
  return faults
}

const createDatabase = async (serverUrl: string) => {
  const name = `llm_relay_chaos_${Crypto.randomBytes(5).toString("hex")}`
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: serverUrl })
      await c.connect()
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await c.end()
    }
  }
}

const readTasks = async (databaseUrl: string): Promise<Array<TaskRow>> => {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const tasks = await client.query<Omit<TaskRow, "chunks">>(
      `SELECT id, status::text AS status, streaming, request_body, response_status, response_body,
              error_type, error_message, attempts
         FROM llm_relay.inference_tasks`
    )
    const chunks = await client.query<{ task_id: string; chunks: Array<string> }>(
      "SELECT task_id, chunks FROM llm_relay.inference_task_chunks ORDER BY task_id, seq"
    )
    const byTask = new Map<string, Array<string>>()
    for (const row of chunks.rows) byTask.set(row.task_id, [...(byTask.get(row.task_id) ?? []), ...row.chunks])
    return tasks.rows.map((row) => ({ ...row, chunks: byTask.get(row.id) ?? [] }))
  } finally {
    await client.end()
  }
}

const freePort = () => Effect.runPromise(Embedded.freePort)

export const runChaos = async (options: ChaosOptions): Promise<ChaosReport> => {
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`))
  const started = performance.now()
  const say = (line: string) =>
    log(`[chaos ${((performance.now() - started) / 1000).toFixed(1).padStart(5)} s] ${line}`)
  const cleanups: Array<() => Promise<unknown>> = []
  const clients = options.clients ?? 12
  const cliCount = options.cliPublishers ?? 3
  const rawCount = options.rawPublishers ?? 2
  const deadlineMs = options.callDeadlineMs ?? 45_000
  const tag = options.seed.toString(36)
  try {
    // ---- the database ----
    let serverUrl = options.serverUrl
    if (serverUrl === undefined || serverUrl === "") {
      say("starting an embedded PostgreSQL (no DATABASE_URL)")
      const scope = Effect.runSync(Scope.make())
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "llm-relay-chaos-"))
      const server = await Effect.runPromise(Scope.extend(Embedded.start({ dataDir: dir, ephemeral: true }), scope))
      cleanups.push(async () => {
        await Effect.runPromise(Scope.close(scope, Exit.void))
        Fs.rmSync(dir, { recursive: true, force: true })
      })
      serverUrl = Redacted.value(server.url)
    }
    const database = await createDatabase(serverUrl)
    /** A violated run keeps its database (with DATABASE_URL) for a look at the rows. */
    let keepDatabase = false
    cleanups.push(() => (keepDatabase ? Promise.resolve() : database.drop()))

    // ---- the broker ----
    const adminToken = `chaos-admin-${Crypto.randomBytes(20).toString("hex")}`
    const port = await freePort()
    const broker = spawnRelay(["serve", "--port", String(port)], {
      DATABASE_URL: database.url,
      RELAY_ADMIN_TOKEN: adminToken,
      // the drain after the load waits on the sweeper for anything left behind
      RELAY_SWEEP_INTERVAL: "2 seconds"
    }, /InternalError|\bERROR\b|defect/i)
    cleanups.push(broker.stop)
    await broker.waitFor(/Listening on/, 60_000, true)
    const brokerUrl = `http://127.0.0.1:${port}`
    const token = async (role: string) => {
      const response = await fetch(`${brokerUrl}/v1/tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
        body: JSON.stringify({ role, name: `chaos-${role}` })
      })
      if (response.status !== 201) throw new Error(`POST /v1/tokens: ${response.status} ${await response.text()}`)
      return ((await response.json()) as { token: string }).token
    }
    const publisherToken = await token("publisher")
    const clientToken = await token("client")
    say(`broker on ${brokerUrl} (database ${new URL(database.url).pathname.slice(1)})`)

    // ---- the publishers: raw ones first (the pool is online once one is) ----
    const raws = Array.from(
      { length: rawCount },
      (_, i) => new ChaosRawPublisher(`chaos-raw-${i}`, brokerUrl, publisherToken, `chaos-raw-${i}-${tag}`, POOL, 4)
    )
    cleanups.push(() => Promise.all(raws.map((r) => r.stop())))
    await Promise.all(raws.map((r) => r.connect()))

    const upstreams: Array<FakeVllm> = await Promise.all(Array.from({ length: cliCount }, () => startFakeVllm()))
    cleanups.push(() => Promise.all(upstreams.map((u) => u.close())))
    const cliArgs = (i: number) => [
      "publish",
      "--server",
      brokerUrl,
      "--token",
      publisherToken,
      "--session-id",
      `chaos-cli-${i}-${tag}`,
      "--provider",
      `name=chaos-cli-${i},upstream=${upstreams[i]!.baseUrl},model=m,pool=${POOL},maxConcurrent=4`
    ]
    const publisherServerErrors: Array<string> = []
    const allPublishers: Array<RelayProcess> = []
    const startCli = async (i: number) => {
      const proc = spawnRelay(cliArgs(i), {}, /stopped \(5\d\d|InternalError/)
      allPublishers.push(proc)
      await proc.waitFor(/connected to .* as session/, 60_000, true)
      return proc
    }
    const clis: Array<RelayProcess> = await Promise.all(Array.from({ length: cliCount }, (_, i) => startCli(i)))
    cleanups.push(() => Promise.all(clis.map((c) => c.stop())))
    say(`${cliCount} publisher processes and ${rawCount} raw publishers on pool '${POOL}'`)

    // ---- faults ----
    const targets = [...clis.map((_, i) => `cli-${i}`), ...raws.map((_, i) => `raw-${i}`)]
    const faults = schedule(options.seed, options.seconds, targets)
    say(
      `fault schedule (${faults.length}): ${
        faults.map((f) => `${(f.atMs / 1000).toFixed(1)}s ${f.kind} ${f.target} ${f.downMs}ms`).join(", ")
      }`
    )
    const chains = new Map<string, Promise<void>>(targets.map((t) => [t, Promise.resolve()] as const))
    const faultProblems: Array<string> = []
    const skipped: Array<Fault> = []
    const t0 = performance.now()
    const loadEnd = t0 + options.seconds * 1000
    const inject = async (fault: Fault) => {
      // its member is not back yet from the previous fault (a restart is slow on a busy machine)
      // and the load is nearly over: a fault now would only stretch the drain
      if (performance.now() > loadEnd - 1000) {
        skipped.push(fault)
        say(`skipped ${fault.kind} ${fault.target} (scheduled at ${(fault.atMs / 1000).toFixed(1)} s): too late`)
        return
      }
      const i = Number(fault.target.split("-")[1])
      if (fault.kind === "drop") {
        say(`drop ${fault.target}'s stream; back in ${fault.downMs} ms`)
        await raws[i]!.drop(fault.downMs)
        say(`${fault.target} reconnected`)
        return
      }
      const proc = clis[i]!
      say(`SIGKILL ${fault.target} (pid ${proc.child.pid}); restart in ${fault.downMs} ms`)
      await proc.kill()
      await sleep(fault.downMs)
      clis[i] = await startCli(i)
      say(`${fault.target} restarted (pid ${clis[i]!.child.pid}) with session chaos-cli-${i}-${tag}`)
    }
    const faultRunner = (async () => {
      for (const fault of faults) {
        const wait = t0 + fault.atMs - performance.now()
        if (wait > 0) await sleep(wait)
        const previous = chains.get(fault.target)!
        chains.set(
          fault.target,
          previous.then(() => inject(fault)).catch((error: unknown) => {
            faultProblems.push(`${fault.kind} ${fault.target}: ${String(error)}`)
          })
        )
      }
    })()

    // ---- load ----
    say(`load: ${clients} clients for ${options.seconds} s`)
    const inFlight = new Set<Promise<void>>()
    const calls = await runLoad({
      seed: options.seed,
      brokerUrl,
      token: clientToken,
      pool: POOL,
      workers: clients,
      until: loadEnd,
      deadlineMs,
      t0,
      inFlight
    })
    say(`load done: ${calls.length} calls settled`)
    await faultRunner
    await Promise.all(chains.values())

    // ---- drain: every task terminal (the sweeper ends what is left), raw publishers idle ----
    const drainUntil = performance.now() + 30_000
    let tasks = await readTasks(database.url)
    while (
      (tasks.some((t) => !TERMINAL.has(t.status)) || raws.some((r) => !r.idle())) && performance.now() < drainUntil
    ) {
      await sleep(250)
      tasks = await readTasks(database.url)
    }
    say(`drained: ${tasks.length} tasks in the database`)

    for (const proc of allPublishers) publisherServerErrors.push(...proc.watched)
    const posts = raws.flatMap((r) => r.posts)
    const { invariants, rate } = check({ calls, tasks, posts, publisherServerErrors, threshold: options.threshold })
    const harness = [...faultProblems, ...raws.flatMap((r) => r.problems)]
    if (harness.length > 0) {
      invariants.push({
        name: "the faults ran as scheduled (restarts and reconnects worked)",
        ok: false,
        counts: `${faults.length} faults; problems ${harness.length}`,
        examples: harness.slice(0, 8)
      })
    }
    const table = summary(calls, rate, faults, skipped, raws, upstreams, broker.watched)
    if (!invariants.every((i) => i.ok) || broker.watched.length > 0) {
      // the broker's own words on what went wrong, whole (its error lines above are cut)
      const file = Path.join(Os.tmpdir(), `llm-relay-chaos-broker-${options.seed}.log`)
      Fs.writeFileSync(file, broker.output())
      say(`broker output (last 200 kB): ${file}`)
      // and the first failure's cause itself, for a run whose files are gone by the time anyone looks (CI)
      const output = broker.output()
      const first = output.search(/unhandled failure|deadlock|RangeError|defect/)
      if (first >= 0) {
        table.push("broker output at its first failure:", ...output.slice(first, first + 4000).split("\n"))
      }
      if (!invariants.every((i) => i.ok) && options.serverUrl !== undefined && options.serverUrl !== "") {
        keepDatabase = true
        say(`database kept for a look: ${database.url}`)
      }
    }
    return { seed: options.seed, ok: invariants.every((i) => i.ok), invariants, rate, calls, faults, table }
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined)
  }
}

const summary = (
  calls: ReadonlyArray<CallRecord>,
  rate: Rate,
  faults: ReadonlyArray<Fault>,
  skipped: ReadonlyArray<Fault>,
  raws: ReadonlyArray<ChaosRawPublisher>,
  upstreams: ReadonlyArray<FakeVllm>,
  brokerErrors: ReadonlyArray<string>
): Array<string> => {
  const lines: Array<string> = []
  const outcomes = ["ok", "failed", "aborted", "hung", "wrong-answer", "truncated"] as const
  const row = (cells: ReadonlyArray<string | number>) =>
    cells.map((c, i) => (i === 0 ? String(c).padEnd(10) : String(c).padStart(12))).join(" ")
  lines.push(row(["kind", "calls", ...outcomes, "injected"]))
  for (const kind of ["stream", "whole", "async", "all"] as const) {
    const of = calls.filter((c) => kind === "all" || c.kind === kind)
    lines.push(row([
      kind,
      of.length,
      ...outcomes.map((o) => of.filter((c) => c.outcome === o).length),
      of.filter((c) => c.directive.f !== 0).length
    ]))
  }
  const types = new Map<string, number>()
  for (const c of calls.filter((c) => c.outcome === "failed")) {
    const key = `${c.errorType ?? "(none)"} ${c.status ?? (c.inBand ? "in-band" : "-")}${
      c.directive.f !== 0 ? " [injected]" : ""
    }`
    types.set(key, (types.get(key) ?? 0) + 1)
  }
  lines.push(`failures by type: ${[...types].sort().map(([k, n]) => `${k} ×${n}`).join(", ") || "none"}`)
  const ran = faults.filter((f) => !skipped.includes(f))
  lines.push(
    `faults: ${ran.filter((f) => f.kind === "kill").length} SIGKILL+restart, ${
      ran.filter((f) => f.kind === "drop").length
    } stream drops (${skipped.length} skipped: too late); raw publishers: ${
      raws.map((r) =>
        `${r.name} frames ${r.counts.frames} (resent ${r.counts.duplicateFrames}) drops ${r.counts.drops} cancels ${r.counts.cancels}`
      ).join("; ")
    }`
  )
  lines.push(
    `fake vLLMs: ${
      upstreams.map((u) =>
        `${u.stats.requests} requests (${u.stats.injected} injected errors, ${u.stats.aborted} aborted)`
      ).join("; ")
    }`
  )
  lines.push(lateAccepted(raws.flatMap((r) => r.posts)))
  if (brokerErrors.length > 0) {
    lines.push(`broker error lines: ${brokerErrors.length}, first: ${brokerErrors[0]!.slice(0, 300)}`)
  }
  lines.push(
    `success rate: ${rate.succeeded}/${rate.counted} = ${
      (rate.rate * 100).toFixed(2)
    }% (excluded: ${rate.excluded.injected} injected upstream errors, ${rate.excluded.aborted} client aborts, ${rate.excluded.disconnectAfterOutput} disconnect-after-output)`
  )
  return lines
}

/** The report as lines: each invariant with its counts, then the table. */
export const formatReport = (report: ChaosReport): Array<string> => {
  const lines = ["", "invariants:"]
  for (const invariant of report.invariants) {
    lines.push(`  ${invariant.ok ? "PASS" : "FAIL"}  ${invariant.name}: ${invariant.counts}`)
    for (const example of invariant.examples) lines.push(`          ${example}`)
  }
  lines.push("", ...report.table, "", `seed ${report.seed}: ${report.ok ? "all invariants hold" : "VIOLATED"}`)
  return lines
}
