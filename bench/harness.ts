/** What the scenarios share: processes, a keep-alive HTTP client, load shapes, statistics. */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Path from "node:path"

export const ROOT = Path.resolve(import.meta.dirname, "../..")

export const agent = new Http.Agent({ keepAlive: true, maxSockets: 1024 })

export interface Answer {
  readonly status: number
  readonly text: string
  /**
   * ms from send to the first body byte; for an event stream, to the first
   * `data:` line (a comment or an empty flush does not count).
   */
  readonly firstMs: number
  readonly totalMs: number
  /** `data:` lines in the body (an SSE answer's chunks, `[DONE]` included). */
  readonly chunks: number
}

/** A request that ran past its `timeoutMs` (it was aborted; the broker sees the client leave). */
export class RequestTimeout extends Error {}

/** One HTTP request on the shared keep-alive agent. */
export const request = (
  url: string,
  options: {
    readonly method?: string
    readonly headers?: Record<string, string>
    readonly body?: unknown
    readonly timeoutMs?: number
  } = {}
): Promise<Answer> =>
  new Promise((resolve, reject) => {
    const started = performance.now()
    const payload = options.body === undefined
      ? undefined
      : typeof options.body === "string"
      ? options.body
      : JSON.stringify(options.body)
    let timer: NodeJS.Timeout | undefined
    const req = Http.request(url, {
      method: options.method ?? (payload === undefined ? "GET" : "POST"),
      agent,
      headers: {
        ...(payload === undefined
          ? {}
          : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }),
        ...options.headers
      }
    }, (res) => {
      let text = ""
      let firstMs = -1
      const sse = String(res.headers["content-type"] ?? "").startsWith("text/event-stream")
      res.setEncoding("utf8")
      res.on("data", (d: string) => {
        text += d
        if (firstMs < 0 && (!sse || text.includes("data:"))) firstMs = performance.now() - started
      })
      res.on("end", () => {
        if (timer !== undefined) clearTimeout(timer)
        let chunks = 0
        for (let i = text.indexOf("data: "); i >= 0; i = text.indexOf("data: ", i + 6)) chunks++
        resolve({ status: res.statusCode ?? 0, text, firstMs, totalMs: performance.now() - started, chunks })
      })
      res.on("error", reject)
    })
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(
        () => req.destroy(new RequestTimeout(`no answer within ${options.timeoutMs} ms`)),
        options.timeoutMs
      )
    }
    req.on("error", (e) => {
      if (timer !== undefined) clearTimeout(timer)
      reject(e)
    })
    req.end(payload)
  })

export interface Spawned {
  readonly child: ChildProcess
  output: string
  readonly stop: () => Promise<void>
}

/** Spawns `node <args>` and waits for `ready` in its output. */
export const spawnNode = async (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  ready: RegExp,
  timeoutMs = 60_000
): Promise<Spawned> => {
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  const spawned: Spawned = {
    child,
    output: "",
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve()
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000)
        child.once("exit", () => {
          clearTimeout(timer)
          resolve()
        })
        child.kill("SIGTERM")
      })
  }
  const append = (d: Buffer) => {
    spawned.output = (spawned.output + d.toString()).slice(-20_000)
  }
  child.stdout!.on("data", append)
  child.stderr!.on("data", append)
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no ${ready} within ${timeoutMs} ms:\n${spawned.output}`)),
      timeoutMs
    )
    const check = () => {
      if (ready.test(spawned.output)) {
        clearTimeout(timer)
        child.stdout!.off("data", check)
        child.stderr!.off("data", check)
        resolve()
      }
    }
    child.stdout!.on("data", check)
    child.stderr!.on("data", check)
    child.once("exit", () => reject(new Error(`exited before ${ready}:\n${spawned.output}`)))
    check()
  })
  return spawned
}

// ---- load shapes ----

/** `concurrency` workers sending back to back for `durationMs`: latencies and requests/s. */
export const closedLoop = async (send: () => Promise<Answer>, concurrency: number, durationMs: number) => {
  const latencies: Array<number> = []
  let errors = 0
  const started = performance.now()
  const deadline = started + durationMs
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const answer = await send().catch(() => undefined)
        if (answer === undefined || answer.status !== 200) errors++
        else latencies.push(answer.totalMs)
      }
    })
  )
  const seconds = (performance.now() - started) / 1000
  return { latencies, errors, perSecond: latencies.length / seconds }
}

/**
 * Open loop: requests start on schedule (`rate` per second) whether or not
 * earlier ones finished, and latency counts from the scheduled moment, so
 * queueing shows instead of hiding (no coordinated omission). `send` gets the
 * ms left before the request must give up (`timeoutMs` after its scheduled
 * moment); a request that gives up counts in `timedOut` and enters the
 * latencies as `timeoutMs` (so percentiles are then lower bounds).
 */
export const openLoop = async (
  send: (timeoutMs: number) => Promise<Answer>,
  rate: number,
  durationMs: number,
  timeoutMs: number
) => {
  const latencies: Array<number> = []
  let errors = 0
  let timedOut = 0
  let late = 0
  const total = Math.round((rate * durationMs) / 1000)
  const started = performance.now()
  const inFlight: Array<Promise<void>> = []
  for (let i = 0; i < total; i++) {
    const scheduled = started + (i * 1000) / rate
    // never early: a timer may fire a fraction of a millisecond before its time
    for (let wait = scheduled - performance.now(); wait > 0; wait = scheduled - performance.now()) {
      await new Promise((r) => setTimeout(r, wait))
    }
    // the generator itself fell behind its schedule by more than 5 ms
    if (performance.now() - scheduled > 5) late++
    inFlight.push(
      send(Math.max(1, timeoutMs - (performance.now() - scheduled))).then(
        (answer) => {
          if (answer.status !== 200) errors++
          else latencies.push(performance.now() - scheduled)
        },
        (e: unknown) => {
          if (e instanceof RequestTimeout) {
            timedOut++
            latencies.push(timeoutMs)
          } else errors++
        }
      )
    )
  }
  const sentSeconds = (performance.now() - started) / 1000
  await Promise.all(inFlight)
  return {
    latencies,
    errors,
    timedOut,
    /** sends the generator started more than 5 ms after their schedule */
    lateSends: late,
    offeredPerSecond: total / sentSeconds,
    perSecond: (latencies.length - timedOut) / ((performance.now() - started) / 1000)
  }
}

// ---- statistics ----

export const quantile = (values: ReadonlyArray<number>, q: number): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
}

export interface Summary {
  readonly n: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly max: number
}

export const summarize = (values: ReadonlyArray<number>): Summary => ({
  n: values.length,
  p50: quantile(values, 0.5),
  p90: quantile(values, 0.9),
  p99: quantile(values, 0.99),
  // not Math.max(...values): a full run's direct path has ~200k samples, past the argument limit
  max: values.length === 0 ? Number.NaN : values.reduce((a, b) => (b > a ? b : a))
})

// ---- /proc readings of a process ----

export const rssBytes = (pid: number): number => {
  const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? "0")
  return kb * 1024
}

/** CPU seconds (user + system) the process has used so far. */
export const cpuSeconds = (pid: number): number => {
  const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100 // utime, stime in clock ticks (100/s)
}

const benchStarted = performance.now()
/** Busy fraction of all CPUs over `ms` (from /proc/stat): what else is running on the machine. */
export const machineBusy = async (ms: number): Promise<number> => {
  const read = () => {
    const f = Fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number)
    const idle = f[3]! + (f[4] ?? 0)
    return { idle, total: f.reduce((a, b) => a + b, 0) }
  }
  const a = read()
  await new Promise((r) => setTimeout(r, ms))
  const b = read()
  return b.total === a.total ? 0 : 1 - (b.idle - a.idle) / (b.total - a.total)
}

/**
 * A fixed single-threaded CPU task (~0.3 s on an idle core here): its wall
 * time against its CPU time shows how contended the machine is, and its CPU
 * time compares machines and runs.
 */
export const calibrate = () => {
  const t = performance.now()
  const c = process.cpuUsage()
  let x = 0
  for (let i = 0; i < 1e8; i++) x = (x + i * 7) % 1000003
  const cpu = process.cpuUsage(c)
  return { wallMs: round(performance.now() - t, 1), cpuMs: round((cpu.user + cpu.system) / 1000, 1), check: x }
}

export const progress = (message: string) =>
  process.stdout.write(`[bench ${((performance.now() - benchStarted) / 1000).toFixed(0).padStart(4)} s] ${message}\n`)

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/**
 * Waits until every process in `pids` uses under `busy` of a core over a
 * 300 ms window (the previous phase's backlog is worked off), at most `maxMs`.
 */
export const settle = async (pids: ReadonlyArray<number>, maxMs = 15_000, busy = 0.15) => {
  const deadline = performance.now() + maxMs
  while (performance.now() < deadline) {
    const before = pids.map(cpuSeconds)
    await sleep(300)
    if (pids.every((pid, i) => (cpuSeconds(pid) - before[i]!) / 0.3 < busy)) return
  }
}

export const round = (n: number, digits = 2) => (Number.isFinite(n) ? Math.round(n * 10 ** digits) / 10 ** digits : n)
