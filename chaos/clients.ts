/**
 * The load: client workers with the official `openai` SDK (maxRetries 0),
 * each drawing its calls from its own seeded stream — streamed and whole chat
 * completions for the pool, some aborted mid-way, and async tasks
 * (POST /v1/tasks, then GET /v1/tasks/:id/wait until terminal). Every call
 * records what it saw: each HTTP status, the task id, the raw event stream,
 * how it ended.
 */
import OpenAI from "openai"
import { type Directive, expectedText, prompt, sleep } from "./answer.js"
import { derive } from "./prng.js"

export type CallKind = "stream" | "whole" | "async"
export type Outcome = "ok" | "wrong-answer" | "truncated" | "failed" | "aborted" | "hung"

export interface CallRecord {
  readonly nonce: string
  readonly worker: number
  readonly kind: CallKind
  readonly directive: Directive
  /** The call is aborted this many ms after it started (AbortController). */
  readonly abortAfterMs: number | undefined
  readonly startedMs: number
  settledMs: number
  outcome: Outcome
  /** Every HTTP status this call got (a /wait loop gets several). */
  readonly statuses: Array<number>
  taskId: string | undefined
  status: number | undefined
  errorType: string | undefined
  errorMessage: string | undefined
  /** The error came as the in-band `data: {"error":…}` frame of a stream. */
  inBand: boolean
  /** A content chunk arrived before the call ended. */
  outputStarted: boolean
  /** Async task: its terminal status as /wait answered it. */
  taskStatus: string | undefined
  raw: string
  detail: string | undefined
}

export interface LoadOptions {
  readonly seed: number
  readonly brokerUrl: string
  readonly token: string
  readonly pool: string
  readonly workers: number
  /** Workers start no new call after this (performance.now() ms). */
  readonly until: number
  /** A call not settled this long after it started is hung (then aborted). */
  readonly deadlineMs: number
  /** performance.now() of the run's start (times are recorded from it). */
  readonly t0: number
  readonly inFlight: Set<Promise<void>>
}

/** What worker `worker` asks next: a pure function of its stream. */
const drawCall = (rng: ReturnType<typeof derive>, seed: number, worker: number, index: number) => {
  const r = rng.next()
  const kind: CallKind = r < 0.45 ? "stream" : r < 0.8 ? "whole" : "async"
  const slow = rng.chance(0.12)
  const f = rng.chance(0.07) ? rng.pick([500, 429]) : 0
  const directive: Directive = {
    n: `${seed.toString(36)}-${worker}-${index}`,
    k: rng.int(3, 8),
    d: slow ? rng.int(150, 400) : rng.int(5, 40),
    w: slow ? rng.int(100, 600) : rng.int(0, 30),
    f
  }
  const abortAfterMs = kind !== "async" && rng.chance(0.1) ? rng.int(20, 900) : undefined
  const thinkMs = rng.int(0, 120)
  return { kind, directive, abortAfterMs, thinkMs }
}

const recordingFetch = (record: CallRecord): typeof fetch => async (input, init) => {
  const response = await fetch(input, init)
  record.statuses.push(response.status)
  record.taskId ??= response.headers.get("x-relay-task-id") ?? undefined
  if (response.body === null || !(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    return response
  }
  const decoder = new TextDecoder()
  const tap = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      record.raw += decoder.decode(chunk, { stream: true })
      controller.enqueue(chunk)
    }
  })
  return new Response(response.body.pipeThrough(tap), {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers
  })
}

const failWith = (record: CallRecord, error: unknown) => {
  record.outcome = "failed"
  if (error instanceof OpenAI.APIError) {
    record.status = error.status
    record.errorType = typeof error.type === "string" ? error.type : undefined
    record.errorMessage = error.message
    record.inBand = error.status === undefined && !(error instanceof OpenAI.APIConnectionError)
    if (error instanceof OpenAI.APIConnectionError) record.detail = `connection error: ${String(error.cause ?? error)}`
  } else {
    record.errorMessage = String(error)
    record.detail = `not an API error: ${String(error)}`
  }
}

const chatCall = async (record: CallRecord, options: LoadOptions, signal: AbortSignal) => {
  const client = new OpenAI({
    apiKey: options.token,
    baseURL: `${options.brokerUrl}/v1`,
    maxRetries: 0,
    timeout: options.deadlineMs * 2, // the run's own deadline decides what hung
    fetch: recordingFetch(record)
  })
  const messages = [{ role: "user" as const, content: prompt(record.directive) }]
  const expected = expectedText(record.directive)
  if (record.kind === "whole") {
    const answer = await client.chat.completions.create({ model: options.pool, messages }, { signal })
    const content = answer.choices[0]?.message?.content ?? ""
    record.outputStarted = true
    record.outcome = content === expected ? "ok" : "wrong-answer"
    if (record.outcome !== "ok") record.detail = `got ${JSON.stringify(content.slice(0, 200))}`
    return
  }
  const stream = await client.chat.completions.create({ model: options.pool, messages, stream: true }, { signal })
  let text = ""
  for await (const chunk of stream) {
    const content = chunk.choices[0]?.delta?.content
    if (typeof content === "string" && content.length > 0) {
      text += content
      record.outputStarted = true
    }
  }
  const done = /data: \[DONE\]\n\n$/.test(record.raw)
  if (done && text === expected) record.outcome = "ok"
  else if (signal.aborted) record.outcome = "aborted" // the SDK ends an aborted stream's iteration quietly
  else if (!done) {
    record.outcome = "truncated"
    record.detail = `no [DONE] at the end; content ${JSON.stringify(text.slice(0, 120))}`
  } else {
    record.outcome = "wrong-answer"
    record.detail = `got ${JSON.stringify(text.slice(0, 200))}`
  }
}

const asyncCall = async (record: CallRecord, options: LoadOptions, signal: AbortSignal) => {
  const fetchIt = recordingFetch(record)
  const headers = { authorization: `Bearer ${options.token}`, "content-type": "application/json" }
  const body = { model: options.pool, messages: [{ role: "user", content: prompt(record.directive) }] }
  const created = await fetchIt(`${options.brokerUrl}/v1/tasks`, {
    method: "POST",
    headers,
    body: JSON.stringify({ model: options.pool, path: "/v1/chat/completions", body }),
    signal
  })
  const createdText = await created.text()
  if (created.status !== 202) return failHttp(record, created.status, createdText)
  const id = (JSON.parse(createdText) as { id: string }).id
  record.taskId = id
  while (true) {
    const waited = await fetchIt(`${options.brokerUrl}/v1/tasks/${id}/wait?timeoutMs=10000`, { headers, signal })
    const text = await waited.text()
    if (waited.status === 504) continue // the wait ran out, the task goes on: wait again
    if (waited.status !== 200) return failHttp(record, waited.status, text)
    const task = JSON.parse(text) as {
      status: string
      responseStatus: number | null
      responseBody: { choices?: Array<{ message?: { content?: string } }> } | null
      errorMessage: string | null
    }
    record.taskStatus = task.status
    if (task.status === "completed" && task.responseStatus === 200) {
      const content = task.responseBody?.choices?.[0]?.message?.content ?? ""
      record.outputStarted = true
      record.outcome = content === expectedText(record.directive) ? "ok" : "wrong-answer"
      if (record.outcome !== "ok") record.detail = `got ${JSON.stringify(content.slice(0, 200))}`
    } else {
      record.outcome = "failed"
      record.status = task.responseStatus ?? undefined
      record.errorMessage = task.errorMessage ?? JSON.stringify(task.responseBody)?.slice(0, 300)
      // the error type of a failed task is read from the database at the end (the Task view has none)
    }
    return
  }
}

const failHttp = (record: CallRecord, status: number, text: string) => {
  record.outcome = "failed"
  record.status = status
  try {
    const wire = JSON.parse(text) as { error?: { type?: string; message?: string } }
    record.errorType = wire.error?.type
    record.errorMessage = wire.error?.message
  } catch {
    record.errorMessage = text.slice(0, 300)
  }
}

/** One call, settled by its deadline at the latest. */
const runCall = async (record: CallRecord, options: LoadOptions) => {
  const controller = new AbortController()
  let hung = false
  let aborted = false
  const deadline = setTimeout(() => {
    hung = true
    controller.abort()
  }, options.deadlineMs)
  const abort = record.abortAfterMs === undefined ? undefined : setTimeout(() => {
    aborted = true
    controller.abort()
  }, record.abortAfterMs)
  try {
    if (record.kind === "async") await asyncCall(record, options, controller.signal)
    else await chatCall(record, options, controller.signal)
  } catch (error) {
    failWith(record, error)
  } finally {
    clearTimeout(deadline)
    if (abort !== undefined) clearTimeout(abort)
  }
  if (hung) record.outcome = "hung"
  else if (aborted && record.outcome !== "ok") record.outcome = "aborted"
  record.settledMs = performance.now() - options.t0
}

/** Runs the workers until `options.until`; resolves when every call has settled. */
export const runLoad = async (options: LoadOptions): Promise<Array<CallRecord>> => {
  const records: Array<CallRecord> = []
  await Promise.all(Array.from({ length: options.workers }, async (_, worker) => {
    const rng = derive(options.seed, `client-${worker}`)
    for (let index = 0; performance.now() < options.until; index++) {
      const { abortAfterMs, directive, kind, thinkMs } = drawCall(rng, options.seed, worker, index)
      const record: CallRecord = {
        nonce: directive.n,
        worker,
        kind,
        directive,
        abortAfterMs,
        startedMs: performance.now() - options.t0,
        settledMs: -1,
        outcome: "failed",
        statuses: [],
        taskId: undefined,
        status: undefined,
        errorType: undefined,
        errorMessage: undefined,
        inBand: false,
        outputStarted: false,
        taskStatus: undefined,
        raw: "",
        detail: undefined
      }
      records.push(record)
      const call = runCall(record, options)
      options.inFlight.add(call)
      await call
      options.inFlight.delete(call)
      await sleep(thinkMs)
    }
  }))
  return records
}
