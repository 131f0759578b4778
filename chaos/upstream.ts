/**
 * A fake vLLM (`/v1/chat/completions`, whole and streamed) in the chaos
 * process, one per real publisher. It answers from the request's directive
 * (answer.ts): `k` chunks of `echo:<nonce>:`, `d` ms apart, after `w` ms, or
 * the injected error status. It stops writing when the caller goes away.
 */
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import {
  completion,
  type Directive,
  directiveOf,
  injectedBody,
  piece,
  sleep,
  streamChunk,
  usageChunk
} from "./answer.js"

export interface FakeVllm {
  /** OpenAI base URL (ending in /v1). */
  readonly baseUrl: string
  readonly stats: { requests: number; injected: number; aborted: number }
  readonly close: () => Promise<void>
}

let ids = 0

export const startFakeVllm = async (): Promise<FakeVllm> => {
  const stats = { requests: 0, injected: 0, aborted: 0 }
  const server = Http.createServer((req, res) => {
    let raw = ""
    req.on("data", (d: Buffer) => (raw += d.toString()))
    req.on("end", () => void answer(raw, req, res))
  })
  const answer = async (raw: string, req: Http.IncomingMessage, res: Http.ServerResponse) => {
    stats.requests++
    let open = true
    res.on("close", () => {
      if (!res.writableFinished) stats.aborted++
      open = false
    })
    let body: Record<string, unknown> = {}
    try {
      body = JSON.parse(raw) as Record<string, unknown>
    } catch {
      // answered below as vLLM would
    }
    const directive: Directive | undefined = directiveOf(body)
    if (req.url !== "/v1/chat/completions" || directive === undefined) {
      res.writeHead(400, { "content-type": "application/json" })
      res.end(JSON.stringify({ error: { message: "not a chaos request", type: "BadRequestError", code: 400 } }))
      return
    }
    await sleep(directive.w)
    if (!open) return
    if (directive.f !== 0) {
      stats.injected++
      res.writeHead(directive.f, { "content-type": "application/json" })
      res.end(JSON.stringify(injectedBody(directive)))
      return
    }
    const id = `chatcmpl-${++ids}`
    const model = String(body.model)
    if (body.stream !== true) {
      const text = JSON.stringify(completion(id, model, directive))
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
      res.end(text)
      return
    }
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
    res.write(`data: ${streamChunk(id, model, { role: "assistant", content: "" })}\n\n`)
    for (let i = 0; i < directive.k; i++) {
      if (i > 0 && directive.d > 0) await sleep(directive.d)
      if (!open) return
      res.write(`data: ${streamChunk(id, model, { content: piece(directive) })}\n\n`)
    }
    res.write(`data: ${streamChunk(id, model, {}, "stop")}\n\n`)
    const options = body.stream_options as { include_usage?: boolean } | undefined
    if (options?.include_usage === true) res.write(`data: ${usageChunk(id, model, directive)}\n\n`)
    res.end("data: [DONE]\n\n")
  }
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    stats,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
