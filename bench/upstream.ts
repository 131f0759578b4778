/**
 * The benchmark's fake OpenAI-compatible upstream, run as its own process
 * (`node dist/bench/upstream.js <port>`): answers at once, so every
 * millisecond measured is the relay's or the client's. Streaming answers send
 * `max_tokens` chunks (default 200) as fast as the socket takes them.
 */
import * as Http from "node:http"

const port = Number(process.argv[2] ?? 0)

const completion = JSON.stringify({
  id: "chatcmpl-bench",
  object: "chat.completion",
  created: 1700000000,
  model: "bench",
  choices: [{ index: 0, message: { role: "assistant", content: "pong" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
})
const chunk = (i: number) =>
  `data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[{"index":0,"delta":{"content":"t${i} "},"finish_reason":null}]}\n\n`

const server = Http.createServer((req, res) => {
  let raw = ""
  req.on("data", (d: Buffer) => (raw += d.toString()))
  req.on("end", () => {
    let body: { stream?: boolean; max_tokens?: number } = {}
    try {
      body = JSON.parse(raw)
    } catch {
      // not JSON: answer anyway
    }
    if (body.stream !== true) {
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(completion) })
      res.end(completion)
      return
    }
    res.writeHead(200, { "content-type": "text/event-stream" })
    const n = body.max_tokens ?? 200
    let out = ""
    for (let i = 0; i < n; i++) out += chunk(i)
    res.end(out + "data: [DONE]\n\n")
  })
})
server.keepAliveTimeout = 60_000
server.listen(port, "127.0.0.1", () => {
  const address = server.address()
  process.stdout.write(`listening ${typeof address === "object" && address ? address.port : 0}\n`)
})
process.on("SIGTERM", () => server.close(() => process.exit(0)))
