/**
 * A publisher written in the test from PROTOCOL.md alone: fetch for the posts,
 * a small SSE parser for the task stream. It lets tests play the publisher's
 * part step by step (ack late, post stale results, drop the stream…).
 */
export interface SseEvent {
  readonly event: string
  readonly data: string
}

/** Parse an SSE byte stream into events (comments are reported as event ":"). */
export async function* parseSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const decoder = new TextDecoder()
  let buffer = ""
  const reader = body.getReader()
  try {
    while (true) {
      const { done, value } = await reader.read()
      if (done) return
      buffer += decoder.decode(value, { stream: true })
      let index: number
      while ((index = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, index)
        buffer = buffer.slice(index + 2)
        let event = "message"
        const data: Array<string> = []
        let comment = false
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) comment = true
          else if (line.startsWith("event:")) event = line.slice(6).trim()
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""))
        }
        if (comment && data.length === 0) yield { event: ":", data: block }
        else yield { event, data: data.join("\n") }
      }
    }
  } finally {
    reader.releaseLock()
  }
}

export interface TaskFrameData {
  readonly kind: "infer"
  readonly taskId: string
  readonly attempt: number
  readonly llmName: string
  readonly model: string
  readonly path: string
  readonly streaming: boolean
  readonly body: Record<string, unknown>
}

export interface ProviderInput {
  readonly name: string
  readonly model?: string
  readonly pool?: string
  readonly maxConcurrent?: number
}

export class RawPublisher {
  sessionId: string | undefined
  private abort: AbortController | undefined
  private events: AsyncGenerator<SseEvent> | undefined
  /** Frames that arrived, in order (task and cancel). */
  readonly frames: Array<SseEvent> = []
  private waiters: Array<() => void> = []

  constructor(readonly baseUrl: string, readonly token: string) {}

  request(method: string, path: string, body?: unknown): Promise<Response> {
    return fetch(`${this.baseUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
  }

  async register(providers: ReadonlyArray<ProviderInput>, sessionId?: string): Promise<Response> {
    const response = await this.request("POST", "/v1/publishers/sessions", {
      ...(sessionId ?? this.sessionId ? { sessionId: sessionId ?? this.sessionId } : {}),
      providers: providers.map((p) => ({ model: "upstream-model", ...p }))
    })
    if (response.ok) {
      const json = (await response.clone().json()) as { sessionId: string }
      this.sessionId = json.sessionId
    }
    return response
  }

  /** Open the task stream and pump its frames into `frames`; resolves after `ready`. */
  async connect(): Promise<void> {
    this.abort = new AbortController()
    const response = await fetch(`${this.baseUrl}/v1/publishers/sessions/${this.sessionId}/tasks`, {
      headers: { authorization: `Bearer ${this.token}` },
      signal: this.abort.signal
    })
    if (!response.ok || response.body === null) throw new Error(`stream: ${response.status} ${await response.text()}`)
    this.events = parseSse(response.body)
    const first = await this.events.next()
    if (first.done || first.value.event !== "ready") {
      throw new Error(`expected ready, got ${JSON.stringify(first.value)}`)
    }
    void this.pump(this.events)
  }

  closed = false
  private async pump(events: AsyncGenerator<SseEvent>) {
    try {
      for await (const event of events) {
        if (event.event === ":") continue
        this.frames.push(event)
        this.wake()
      }
    } catch {
      // aborted
    }
    this.closed = true
    this.wake()
  }

  private wake() {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }

  /** Wait (on frame arrival, re-checking every 100 ms) until `condition` holds. */
  async until<A>(condition: () => A | undefined | false, what: string, timeoutMs = 10_000): Promise<A> {
    const deadline = Date.now() + timeoutMs
    while (true) {
      const value = condition()
      if (value !== undefined && value !== false) return value
      if (Date.now() > deadline) {
        throw new Error(`${what}: not within ${timeoutMs} ms; frames: ${JSON.stringify(this.frames)}`)
      }
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve)
        setTimeout(resolve, 100)
      })
    }
  }

  /** The first frame matching `predicate` (waiting for it). */
  next(predicate: (e: SseEvent) => boolean, timeoutMs = 10_000): Promise<SseEvent> {
    return this.until(() => this.frames.find(predicate), "matching frame", timeoutMs)
  }

  tasks(): Array<TaskFrameData> {
    return this.frames.filter((f) => f.event === "task").map((f) => JSON.parse(f.data) as TaskFrameData)
  }

  /** The task frame number `index` (0-based), waiting for it. */
  nextTask(timeoutMs = 10_000, index = 0): Promise<TaskFrameData> {
    return this.until(() => this.tasks()[index], `task frame #${index}`, timeoutMs)
  }

  cancels(): Array<{ taskId: string; reason: string }> {
    return this.frames.filter((f) => f.event === "cancel").map((f) =>
      JSON.parse(f.data) as { taskId: string; reason: string }
    )
  }

  async waitClosed(timeoutMs = 10_000): Promise<void> {
    await this.until(() => this.closed, "stream closed", timeoutMs)
  }

  disconnect(): void {
    this.abort?.abort()
  }

  post(taskId: string, what: "ack" | "chunks" | "result" | "error", body: unknown = {}): Promise<Response> {
    return this.request("POST", `/v1/publishers/sessions/${this.sessionId}/tasks/${taskId}/${what}`, body)
  }
}

/**
 * Answer every task frame that arrives with `respond` (once per frame), until
 * the returned stop function is called.
 */
export const autoServe = (
  publisher: RawPublisher,
  respond: (task: TaskFrameData) => Promise<unknown>
): () => void => {
  let stopped = false
  let seen = 0
  void (async () => {
    while (!stopped) {
      const task = await publisher.nextTask(60_000, seen).catch(() => undefined)
      if (task === undefined || stopped) return
      seen++
      void respond(task)
    }
  })()
  return () => {
    stopped = true
  }
}

/** A chat completion body as an upstream would answer. */
export const completion = (content: string, model = "upstream-model") => ({
  id: "chatcmpl-test",
  object: "chat.completion",
  created: 1_700_000_000,
  model,
  choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
})

/** One streamed chat chunk as JSON text. */
export const chunk = (content: string, model = "upstream-model") =>
  JSON.stringify({
    id: "chatcmpl-test",
    object: "chat.completion.chunk",
    created: 1_700_000_000,
    model,
    choices: [{ index: 0, delta: { content }, finish_reason: null }]
  })
