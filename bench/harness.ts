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
  /** ms from send to the first body byte (streams: the first `data:` chunk) and to the end. */
  readonly firstMs: number
  readonly totalMs: number
  readonly chunks: number
}

/** One HTTP request on the shared keep-alive agent. */
export const request = (
  url: string,
  options: { readonly method?: string; readonly headers?: Record<string, string>; readonly body?: unknown } = {}
): Promise<Answer> =>
  new Promise((resolve, reject) => {
    const started = performance.now()
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body)
    const req = Http.request(url, {
      method: options.method ?? (payload === undefined ? "GET" : "POST"),
      agent,
      headers: {
        ...(payload === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }),
        ...options.headers
      }
    }, (res) => {
      let text = ""
      let firstMs = -1
      let chunks = 0
      res.setEncoding("utf8")
      res.on("data", (d: string) => {
        if (firstMs < 0) firstMs = performance.now() - started
        text += d
      })
      res.on("end", () => {
        for (let i = text.indexOf("data: "); i >= 0; i = text.indexOf("data: ", i + 6)) chunks++
        resolve({ status: res.statusCode ?? 0, text, firstMs, totalMs: performance.now() - started, chunks })
      })
      res.on("error", reject)
    })
    req.on("error", reject)
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
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
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
    const timer = setTimeout(() => reject(new Error(`no ${ready} within ${timeoutMs} ms:\n${spawned.output}`)), timeoutMs)
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
 * queueing shows instead of hiding (no coordinated omission).
 */
export const openLoop = async (send: () => Promise<Answer>, rate: number, durationMs: number) => {
  const latencies: Array<number> = []
  let errors = 0
  const total = Math.round((rate * durationMs) / 1000)
  const started = performance.now()
  const inFlight: Array<Promise<void>> = []
  for (let i = 0; i < total; i++) {
    const scheduled = started + (i * 1000) / rate
    const wait = scheduled - performance.now()
    if (wait > 1) await new Promise((r) => setTimeout(r, wait))
    inFlight.push(
      send().then(
        (answer) => {
          if (answer.status !== 200) errors++
          else latencies.push(performance.now() - scheduled)
        },
        () => {
          errors++
        }
      )
    )
  }
  await Promise.all(inFlight)
  return { latencies, errors, perSecond: latencies.length / ((performance.now() - started) / 1000) }
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
  max: values.length === 0 ? Number.NaN : Math.max(...values)
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

export const progress = (message: string) => process.stdout.write(`[bench] ${message}\n`)

export const round = (n: number, digits = 2) => (Number.isFinite(n) ? Math.round(n * 10 ** digits) / 10 ** digits : n)
