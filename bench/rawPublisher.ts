/**
 * A minimal publisher written straight on node:http, for the benchmark: the
 * same wire protocol as `bin/llm-relay publish` (PROTOCOL.md), with none of
 * its machinery (no Effect, no reconnects, no drain). Running the relayed
 * scenarios with `--publisher raw` and `--publisher cli` tells how much of the
 * relay's overhead is the broker and how much the project's publisher.
 *
 * As a process: `node dist/bench/rawPublisher.js --server URL --token T
 * --provider name=N,upstream=http://h:p/v1,model=M,maxConcurrent=K`; it prints
 * `connected to URL as session ID` once its task stream is open and stops on
 * SIGTERM (goodbye first).
 *
 * Per task: call the upstream; non-streaming: POST result with its body;
 * streaming: POST the upstream's chunks in batches (whatever arrived while
 * the previous post was in flight goes as one batch), then POST result. Every
 * post carries the frame's `attempt`. No ack: a chunk or the result counts as
 * one, and the fake upstream answers in well under the claim timeout.
 */
import * as Http from "node:http"

export interface RawProvider {
  readonly name: string
  readonly upstream: string
  readonly model: string
  readonly maxConcurrent: number
}

export interface RawPublisher {
  readonly sessionId: string
  /** Goodbye (DELETE) and close the task stream. */
  readonly stop: () => Promise<void>
}

interface TaskFrame {
  readonly taskId: string
  readonly attempt: number
  readonly llmName: string
  readonly path: string
  readonly streaming: boolean
  readonly body: Record<string, unknown>
}

const agent = new Http.Agent({ keepAlive: true, maxSockets: 256 })

const send = (
  url: string,
  method: string,
  token: string | undefined,
  body?: unknown
): Promise<{ status: number; text: string }> =>
  new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = Http.request(url, {
      method,
      agent,
      headers: {
        ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
        ...(payload === undefined
          ? {}
          : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) })
      }
    }, (res) => {
      let text = ""
      res.setEncoding("utf8")
      res.on("data", (d: string) => (text += d))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }))
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(payload)
  })

/** `data:` payloads of an SSE byte stream, as they complete. */
const sseData = (onData: (data: string, event: string) => void) => {
  let buffer = ""
  let event = ""
  let data: Array<string> = []
  return (text: string) => {
    buffer += text
    let nl: number
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, "")
      buffer = buffer.slice(nl + 1)
      if (line === "") {
        if (data.length > 0) onData(data.join("\n"), event || "message")
        event = ""
        data = []
      } else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""))
      else if (line.startsWith("event:")) event = line.slice(6).trim()
    }
  }
}

/** Registers, opens the task stream and serves tasks until `stop`. */
export const startRawPublisher = async (
  server: string,
  token: string,
  providers: ReadonlyArray<RawProvider>
): Promise<RawPublisher> => {
  const registered = await send(`${server}/v1/publishers/sessions`, "POST", token, {
    providers: providers.map((p) => ({ name: p.name, model: p.model, type: "openai", maxConcurrent: p.maxConcurrent }))
  })
  if (registered.status !== 200) throw new Error(`registration answered ${registered.status}: ${registered.text}`)
  const sessionId = (JSON.parse(registered.text) as { sessionId: string }).sessionId
  const byName = new Map(providers.map((p) => [p.name, p] as const))
  const base = `${server}/v1/publishers/sessions/${sessionId}/tasks`

  const post = async (frame: TaskFrame, what: string, body: Record<string, unknown>) => {
    const answer = await send(`${base}/${frame.taskId}/${what}`, "POST", token, { ...body, attempt: frame.attempt })
    if (answer.status >= 300) throw new Error(`${what} answered ${answer.status}: ${answer.text.slice(0, 200)}`)
  }

  const relay = (frame: TaskFrame, provider: RawProvider) =>
    new Promise<void>((resolve, reject) => {
      const url = provider.upstream.replace(/\/v1\/?$/, "") + frame.path
      const payload = JSON.stringify({ ...frame.body, model: provider.model })
      const req = Http.request(url, {
        method: "POST",
        agent,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }
      }, (res) => {
        res.setEncoding("utf8")
        if (!frame.streaming || res.statusCode !== 200) {
          let text = ""
          res.on("data", (d: string) => (text += d))
          res.on("end", () => {
            const status = res.statusCode ?? 502
            let body: unknown
            try {
              body = JSON.parse(text)
            } catch {
              body = undefined
            }
            const done = status < 400
              ? post(frame, "result", body === undefined ? { status } : { status, body })
              : post(frame, "error", { status, message: `upstream answered ${status}` })
            done.then(resolve, reject)
          })
          return
        }
        // Streaming: one post in flight at a time; what queues meanwhile is the next batch.
        let pending: Array<string> = []
        let posting: Promise<void> | undefined
        let ended = false
        let failed: unknown
        const flush = (): void => {
          if (posting !== undefined || pending.length === 0) return
          const chunks = pending
          pending = []
          posting = post(frame, "chunks", { chunks }).then(
            () => {
              posting = undefined
              flush()
              finish()
            },
            (e) => {
              failed = e
              posting = undefined
              finish()
            }
          )
        }
        const finish = () => {
          if (!ended || posting !== undefined) return
          if (failed !== undefined) return reject(failed)
          if (pending.length > 0) return flush()
          ended = false // once
          post(frame, "result", { status: 200 }).then(resolve, reject)
        }
        const parse = sseData((data) => {
          if (data === "[DONE]") return
          pending.push(data)
          flush()
        })
        res.on("data", parse)
        res.on("end", () => {
          ended = true
          finish()
        })
        res.on("error", reject)
      })
      req.on("error", reject)
      req.end(payload)
    })

  const inFlight = new Set<string>()
  const onFrame = (data: string, event: string) => {
    if (event !== "task") return
    const frame = JSON.parse(data) as TaskFrame
    const provider = byName.get(frame.llmName)
    if (provider === undefined) {
      void post(frame, "error", { status: 502, message: `no provider '${frame.llmName}'` }).catch(() => {})
      return
    }
    inFlight.add(frame.taskId)
    relay(frame, provider)
      .catch((e: unknown) => {
        process.stderr.write(`task ${frame.taskId}: ${e instanceof Error ? e.message : String(e)}\n`)
      })
      .finally(() => inFlight.delete(frame.taskId))
  }

  const stream = await new Promise<Http.ClientRequest>((resolve, reject) => {
    const req = Http.get(
      base,
      { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream" } },
      (res) => {
        if (res.statusCode !== 200) return reject(new Error(`task stream answered ${res.statusCode}`))
        res.setEncoding("utf8")
        let ready = false
        const parse = sseData((data, event) => {
          if (event === "ready" && !ready) {
            ready = true
            resolve(req)
          } else onFrame(data, event)
        })
        res.on("data", parse)
        res.on("error", () => {})
      }
    )
    req.on("error", reject)
  })

  const heartbeat = setInterval(() => {
    void send(`${server}/v1/publishers/sessions/${sessionId}/heartbeat`, "POST", token).catch(() => {})
  }, 30_000)
  heartbeat.unref()

  return {
    sessionId,
    stop: async () => {
      clearInterval(heartbeat)
      const deadline = Date.now() + 5_000
      while (inFlight.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
      await send(`${server}/v1/publishers/sessions/${sessionId}`, "DELETE", token).catch(() => {})
      stream.destroy()
      agent.destroy()
    }
  }
}

// ---- as a process ----

const flag = (name: string) => {
  const i = process.argv.indexOf(name)
  return i >= 0 ? process.argv[i + 1] : undefined
}

const parseProvider = (spec: string): RawProvider => {
  const fields = new Map(
    spec.split(",").map((kv) => {
      const eq = kv.indexOf("=")
      return [kv.slice(0, eq), kv.slice(eq + 1)] as const
    })
  )
  const name = fields.get("name")
  const upstream = fields.get("upstream")
  const model = fields.get("model")
  if (name === undefined || upstream === undefined || model === undefined) throw new Error(`bad --provider '${spec}'`)
  return { name, upstream, model, maxConcurrent: Number(fields.get("maxConcurrent") ?? "4") }
}

if (process.argv[1] !== undefined && /rawPublisher\.js$/.test(process.argv[1])) {
  const server = flag("--server")
  const token = flag("--token")
  const providers = process.argv.flatMap((
    a,
    i
  ) => (a === "--provider" && process.argv[i + 1] !== undefined ? [parseProvider(process.argv[i + 1]!)] : []))
  if (server === undefined || token === undefined || providers.length === 0) {
    process.stderr.write(
      "usage: rawPublisher.js --server URL --token TOKEN --provider name=N,upstream=URL,model=M[,maxConcurrent=K]\n"
    )
    process.exit(2)
  }
  startRawPublisher(server, token, providers).then(
    (publisher) => {
      process.stdout.write(`connected to ${server} as session ${publisher.sessionId}\n`)
      const stop = () => void publisher.stop().finally(() => process.exit(0))
      process.on("SIGTERM", stop)
      process.on("SIGINT", stop)
    },
    (e: unknown) => {
      process.stderr.write(`raw publisher: ${e instanceof Error ? e.message : String(e)}\n`)
      process.exit(1)
    }
  )
}
