/**
 * A fake OpenAI-compatible server, the kind a publisher sits next to: a
 * deterministic answer ("echo: <last message>"), a configurable delay and
 * chunk count, a record of every request it got and whether the caller
 * aborted it, and `GET /v1/models` for a publisher's health probe.
 */
import * as Http from "node:http"
import type { AddressInfo } from "node:net"

export interface FakeSettings {
  /** Delay before the answer starts (ms). */
  delayMs: number
  /** Chunks of a streamed answer. */
  chunks: number
  /** Delay between streamed chunks (ms). */
  chunkDelayMs: number
  /** Answer with this error status instead. */
  failStatus?: number | undefined
  /** Answer 200 with this text (not JSON) instead. */
  plainText?: string | undefined
  /** Answer whole JSON even when asked to stream. */
  neverStream?: boolean | undefined
}

export interface Received {
  readonly path: string
  readonly body: Record<string, unknown>
  aborted: boolean
  finished: boolean
}

export interface FakeUpstream {
  /** The OpenAI base URL, ending in /v1. */
  readonly baseUrl: string
  readonly settings: FakeSettings
  /** Inference requests (health probes, `GET …/models`, are not among them). */
  readonly received: Array<Received>
  /** How many health probes (`GET …/models`) it answered. */
  readonly probes: () => number
  /** Requests being answered right now, and the most ever at once. */
  readonly inFlight: () => number
  readonly maxInFlight: () => number
  readonly resetStats: () => void
  readonly close: () => Promise<void>
}

export const lastMessage = (body: Record<string, unknown>): string => {
  const messages = body.messages as Array<{ content?: unknown }> | undefined
  const prompt = body.prompt
  if (Array.isArray(messages) && messages.length > 0) return String(messages[messages.length - 1]!.content ?? "")
  return typeof prompt === "string" ? prompt : ""
}

/** The streamed pieces of the answer to `content`: together they spell "echo: <content>". */
export const pieces = (content: string, n: number): Array<string> => {
  const text = `echo: ${content}`
  const size = Math.ceil(text.length / n)
  return Array.from({ length: n }, (_, i) => text.slice(i * size, (i + 1) * size))
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export const startFakeUpstream = async (initial: Partial<FakeSettings> = {}): Promise<FakeUpstream> => {
  const settings: FakeSettings = { delayMs: 0, chunks: 5, chunkDelayMs: 0, ...initial }
  const received: Array<Received> = []
  let inFlight = 0
  let maxInFlight = 0

  let probes = 0
  const server = Http.createServer((req, res) => {
    if (req.method === "GET" && (req.url ?? "").endsWith("/models")) {
      // a publisher's health probe: answered, counted apart from the inference requests
      probes += 1
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({ object: "list", data: [{ id: "fake-model", object: "model" }] }))
      return
    }
    let raw = ""
    req.on("data", (d: Buffer) => (raw += d.toString()))
    req.on("end", async () => {
      const body = JSON.parse(raw || "{}") as Record<string, unknown>
      const record: Received = { path: req.url ?? "", body, aborted: false, finished: false }
      received.push(record)
      inFlight += 1
      maxInFlight = Math.max(maxInFlight, inFlight)
      let open = true
      res.on("close", () => {
        open = false
        if (!record.finished) record.aborted = true
        inFlight -= 1
      })
      await sleep(settings.delayMs)
      if (!open) return
      /** The whole answer at once. */
      const answer = (status: number, contentType: string, text: string) => {
        res.writeHead(status, { "content-type": contentType })
        record.finished = true
        res.end(text)
      }
      const model = String(body.model)
      const content = lastMessage(body)
      if (settings.failStatus !== undefined) {
        answer(
          settings.failStatus,
          "application/json",
          JSON.stringify({ error: { message: `upstream says no (${settings.failStatus})`, type: "fake_error" } })
        )
        return
      }
      if (settings.plainText !== undefined) {
        answer(200, "text/plain", settings.plainText)
        return
      }
      if (record.path.endsWith("/embeddings")) {
        // one 2-dimensional vector per input: [length of the input, 0.5]
        const inputs = Array.isArray(body.input) ? body.input : [body.input]
        const vectors = inputs.map((input) => [String(input).length, 0.5])
        answer(
          200,
          "application/json",
          JSON.stringify({
            object: "list",
            model,
            data: vectors.map((vector, index) => ({
              object: "embedding",
              index,
              embedding: body.encoding_format === "base64"
                ? Buffer.from(new Float32Array(vector).buffer).toString("base64")
                : vector
            })),
            usage: { prompt_tokens: 1, total_tokens: 1 }
          })
        )
        return
      }
      if (record.path.endsWith("/v1/completions")) {
        answer(
          200,
          "application/json",
          JSON.stringify({
            id: "cmpl-fake",
            object: "text_completion",
            created: 1700000000,
            model,
            choices: [{ index: 0, text: `echo: ${content}`, finish_reason: "stop", logprobs: null }],
            usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
          })
        )
        return
      }
      if (body.stream !== true || settings.neverStream === true) {
        answer(
          200,
          "application/json",
          JSON.stringify({
            id: "chatcmpl-fake",
            object: "chat.completion",
            created: 1700000000,
            model,
            choices: [{ index: 0, message: { role: "assistant", content: `echo: ${content}` }, finish_reason: "stop" }],
            usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
          })
        )
        return
      }
      res.writeHead(200, { "content-type": "text/event-stream" })
      for (const piece of pieces(content, settings.chunks)) {
        if (!open) return
        res.write(`data: ${
          JSON.stringify({
            id: "chatcmpl-fake",
            object: "chat.completion.chunk",
            created: 1700000000,
            model,
            choices: [{ index: 0, delta: { content: piece }, finish_reason: null }]
          })
        }\n\n`)
        if (settings.chunkDelayMs > 0) await sleep(settings.chunkDelayMs)
      }
      if (!open) return
      record.finished = true
      res.end("data: [DONE]\n\n")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    settings,
    received,
    probes: () => probes,
    inFlight: () => inFlight,
    maxInFlight: () => maxInFlight,
    resetStats: () => {
      maxInFlight = inFlight
      received.length = 0
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
