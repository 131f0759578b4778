/**
 * The performance guard behind `npm run bench -- --check`: the CPU a relayed
 * call costs the broker and the publisher, per request, measured after a real
 * warm-up and divided by this run's own CPU calibration figure, against the
 * committed `bench/results/baseline.json`. A figure more than the tolerance
 * (15%) above its baseline fails the run (exit 1).
 *
 * Why CPU per request and not throughput or latency: every process here shares
 * two cores, so wall-clock figures move with whatever else runs; CPU seconds
 * per request of one process move far less, and dividing them by the CPU time
 * of a fixed loop measured in the same run (the calibration) takes out the
 * machine's speed. Each figure is the median of several rounds.
 *
 * `--write-baseline` runs the same measurement with longer phases and writes
 * the baseline instead of comparing.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { type Answer, calibrate, closedLoop, cpuSeconds, progress, ROOT, round, settle } from "./harness.js"

export const BASELINE = Path.join(ROOT, "bench/results/baseline.json")
export const TOLERANCE = 0.15

/** What the guard measures, keyed as in baseline.json. */
export type FigureKey =
  | "brokerCpuMsPerRequest"
  | "publisherCpuMsPerRequest"
  | "brokerCpuMsPerStream"
  | "publisherCpuMsPerStream"

const labels: Record<FigureKey, string> = {
  brokerCpuMsPerRequest: "broker CPU per non-streaming request (c=64)",
  publisherCpuMsPerRequest: "publisher CPU per non-streaming request (c=64)",
  brokerCpuMsPerStream: "broker CPU per 200-chunk stream (c=20)",
  publisherCpuMsPerStream: "publisher CPU per 200-chunk stream (c=20)"
}

export interface GuardFigures {
  /** CPU ms of the fixed calibration loop (median of the runs at start and end) */
  readonly calibrationCpuMs: number
  /** raw CPU ms per request or stream (median of the rounds) */
  readonly raw: Record<FigureKey, number>
  /** raw divided by the calibration, ×1000 (CPU per request in thousandths of the calibration loop) */
  readonly normalized: Record<FigureKey, number>
  /** every round, for the record */
  readonly rounds: ReadonlyArray<Record<FigureKey, number>>
  readonly relayedPerSecond: number
  readonly settings: { readonly warmupSeconds: number; readonly rounds: number; readonly secondsPerPhase: number }
}

export interface Paths {
  readonly sendRequest: () => Promise<Answer>
  readonly sendStream: () => Promise<Answer>
  readonly broker: number
  readonly publisher: number
}

const median = (values: ReadonlyArray<number>) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const calibration = () => median([calibrate().cpuMs, calibrate().cpuMs, calibrate().cpuMs])

/** CPU ms of the broker and the publisher per successful answer of `send` at `concurrency`. */
const cpuPer = async (paths: Paths, send: () => Promise<Answer>, concurrency: number, seconds: number) => {
  await settle([paths.broker, paths.publisher])
  const b0 = cpuSeconds(paths.broker)
  const p0 = cpuSeconds(paths.publisher)
  const run = await closedLoop(send, concurrency, seconds * 1000)
  const n = run.latencies.length + run.errors
  if (run.errors > 0) {
    throw new Error(`${run.errors} of ${n} relayed calls failed during the guard: the figures would be wrong`)
  }
  return {
    broker: ((cpuSeconds(paths.broker) - b0) * 1000) / n,
    publisher: ((cpuSeconds(paths.publisher) - p0) * 1000) / n,
    perSecond: run.perSecond
  }
}

export const measure = async (
  paths: Paths,
  settings: { readonly warmupSeconds: number; readonly rounds: number; readonly secondsPerPhase: number }
): Promise<GuardFigures> => {
  const before = calibration()
  // The JIT needs thousands of calls of each path before its code settles: a
  // short warm-up measures the compiler, not the relay (quick-mode figures
  // vary 2× for that reason).
  progress(`guard: warming up ${settings.warmupSeconds} s (non-streaming and streaming)`)
  await closedLoop(paths.sendRequest, 32, (settings.warmupSeconds * 1000) / 2)
  await closedLoop(paths.sendStream, 20, (settings.warmupSeconds * 1000) / 2)
  const rounds: Array<Record<FigureKey, number>> = []
  const rates: Array<number> = []
  for (let i = 0; i < settings.rounds; i++) {
    progress(`guard: round ${i + 1} of ${settings.rounds}, ${settings.secondsPerPhase} s per phase`)
    const request = await cpuPer(paths, paths.sendRequest, 64, settings.secondsPerPhase)
    const stream = await cpuPer(paths, paths.sendStream, 20, settings.secondsPerPhase)
    rates.push(request.perSecond)
    rounds.push({
      brokerCpuMsPerRequest: request.broker,
      publisherCpuMsPerRequest: request.publisher,
      brokerCpuMsPerStream: stream.broker,
      publisherCpuMsPerStream: stream.publisher
    })
  }
  const calibrationCpuMs = median([before, calibration()])
  const keys = Object.keys(labels) as Array<FigureKey>
  const raw = Object.fromEntries(keys.map((k) => [k, round(median(rounds.map((r) => r[k])), 4)])) as Record<
    FigureKey,
    number
  >
  const normalized = Object.fromEntries(keys.map((k) => [k, round((raw[k] / calibrationCpuMs) * 1000, 4)])) as Record<
    FigureKey,
    number
  >
  return {
    calibrationCpuMs,
    raw,
    normalized,
    rounds: rounds.map((r) => Object.fromEntries(keys.map((k) => [k, round(r[k], 4)])) as Record<FigureKey, number>),
    relayedPerSecond: round(median(rates), 1),
    settings
  }
}

export interface Baseline extends GuardFigures {
  readonly date: string
  readonly revision: string
  readonly machine: unknown
}

export const readBaseline = (): Baseline => {
  if (!Fs.existsSync(BASELINE)) {
    throw new Error(`no ${Path.relative(ROOT, BASELINE)}: write one with \`npm run bench -- --check --write-baseline\``)
  }
  return JSON.parse(Fs.readFileSync(BASELINE, "utf8")) as Baseline
}

export interface Verdict {
  readonly key: FigureKey
  readonly label: string
  readonly now: number
  readonly baseline: number
  readonly ratio: number
  readonly pass: boolean
}

/** Each figure against its baseline, both normalized by their own run's calibration. */
export const compare = (now: GuardFigures, baseline: GuardFigures): ReadonlyArray<Verdict> =>
  (Object.keys(labels) as Array<FigureKey>).map((key) => {
    const ratio = now.normalized[key] / baseline.normalized[key]
    return {
      key,
      label: labels[key],
      now: now.raw[key],
      baseline: baseline.raw[key],
      ratio: round(ratio, 3),
      pass: Number.isFinite(ratio) && ratio <= 1 + TOLERANCE
    }
  })

export const printVerdicts = (now: GuardFigures, baseline: Baseline, verdicts: ReadonlyArray<Verdict>) => {
  console.log(
    `\nperformance guard against ${Path.relative(ROOT, BASELINE)} (${baseline.revision}, ${
      baseline.date.slice(0, 10)
    }); ` +
      `calibration ${now.calibrationCpuMs} ms CPU now, ${baseline.calibrationCpuMs} ms then; tolerance +${
        TOLERANCE * 100
      }%`
  )
  const width = Math.max(...verdicts.map((v) => v.label.length))
  for (const v of verdicts) {
    console.log(
      `  ${v.pass ? "pass" : "FAIL"}  ${v.label.padEnd(width)}  ${v.now.toFixed(3)} ms now, ${
        v.baseline.toFixed(3)
      } ms baseline, ` +
        `${v.ratio.toFixed(3)}× calibrated`
    )
  }
  console.log(
    `  (relayed ${now.relayedPerSecond} req/s at c=64 now, ${baseline.relayedPerSecond} in the baseline: wall-clock, not checked)`
  )
}
