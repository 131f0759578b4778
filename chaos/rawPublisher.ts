/**
 * A publisher written from PROTOCOL.md alone (fetch for the posts, a small
 * SSE reader for the task stream), in the chaos process. Its fault: `drop()`
 * aborts the task stream in the middle of its work; the work it had keeps
 * running and posting (chunks, result, error — each with the frame's
 * attempt) as a publisher on a flaky network would, and after `downMs` it
 * registers again with the same session id and reopens the stream.
 *
 * Every post's answer is recorded, so the run can check that the broker
 * accepted at most one result per task and answered no post with a 5xx.
 */
import { completion, type Directive, directiveOf, injectedBody, piece, sleep, streamChunk } from "./answer.js"

export interface PostRecord {
  readonly publisher: string
  readonly taskId: string
  readonly attempt: number
  readonly what: "ack" | "chunks" | "result" | "error"
  readonly status: number
  /** The post left after the stream it came from was dropped. */
  readonly afterDrop: boolean
  /** ms from the last drop to this post's answer (after a drop only). */
  readonly sinceDropMs?: number
  readonly errorType?: string
}

interface TaskFrame {
  readonly taskId: string
  readonly attempt: number
  readonly llmName: string
  readonly streaming: boolean
  readonly body: Record<string, unknown>
}

async function* sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<{ event: string; data: string }> {
  const decoder = new TextDecoder()
  const reader = body.getReader()
  let buffer = ""
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
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim()
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""))
        }
        if (data.length > 0) yield { event, data: data.join("\n") }
      }
    }
  } finally {
    reader.releaseLock()
  }
}

export class ChaosRawPublisher {
  readonly posts: Array<PostRecord> = []
  readonly counts = { frames: 0, duplicateFrames: 0, drops: 0, reconnects: 0, cancels: 0 }
  /** Problems that are not the broker's answers (a registration that never worked, …). */
  readonly problems: Array<string> = []
  private stream: AbortController | undefined
  /** Bumped at each drop: work started on an earlier generation posts "after drop". */
  private generation = 0
  private droppedAt = 0
  private readonly running = new Set<string>()
  private readonly cancelled = new Set<string>()
  private stopped = false
  private heartbeat: NodeJS.Timeout | undefined
  online = false

  constructor(
    readonly name: string,
    readonly baseUrl: string,
    readonly token: string,
    readonly sessionId: string,
    readonly pool: string,
    readonly maxConcurrent: number
  ) {}

  private request(method: string, path: string, body?: unknown): Promise<Response> {
    return fetch(`${this.baseUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
  }

  /** Register (same session id every time) and open the task stream; resolves once `ready` arrived. */
  async connect(): Promise<void> {
    for (let tries = 1; !this.stopped; tries++) {
      try {
        const registered = await this.request("POST", "/v1/publishers/sessions", {
          sessionId: this.sessionId,
          providers: [{ name: this.name, model: "m", pool: this.pool, maxConcurrent: this.maxConcurrent }]
        })
        if (registered.status !== 200) throw new Error(`register: ${registered.status} ${await registered.text()}`)
        const controller = new AbortController()
        const response = await fetch(`${this.baseUrl}/v1/publishers/sessions/${this.sessionId}/tasks`, {
          headers: { authorization: `Bearer ${this.token}` },
          signal: controller.signal
        })
        if (response.status !== 200 || response.body === null) {
          throw new Error(`stream: ${response.status} ${await response.text()}`)
        }
        const events = sseEvents(response.body)
        const first = await events.next()
        if (first.done === true || first.value.event !== "ready") {
          throw new Error("the stream's first frame is not ready")
        }
        this.stream = controller
        this.online = true
        void this.pump(events, controller)
        this.heartbeat ??= setInterval(() => {
          void this.request("POST", `/v1/publishers/sessions/${this.sessionId}/heartbeat`).then(
            (r) => r.body?.cancel(),
            () => undefined
          )
        }, 10_000)
        return
      } catch (error) {
        if (tries >= 20) {
          this.problems.push(`${this.name}: could not connect 20 times: ${String(error)}`)
          throw error
        }
        await sleep(Math.min(100 * tries, 1000))
      }
    }
  }

  private async pump(events: AsyncGenerator<{ event: string; data: string }>, controller: AbortController) {
    try {
      for await (const event of events) {
        if (event.event === "task") {
          const frame = JSON.parse(event.data) as TaskFrame
          this.counts.frames++
          const key = `${frame.taskId}#${frame.attempt}`
          // a frame sent again (same task and attempt) after a reconnect: already running
          if (this.running.has(key)) this.counts.duplicateFrames++
          else void this.work(frame, key)
        } else if (event.event === "cancel") {
          this.counts.cancels++
          this.cancelled.add((JSON.parse(event.data) as { taskId: string }).taskId)
        } else if (event.event === "reconnect") {
          break
        }
      }
    } catch {
      // aborted (a drop) or the broker went away
    }
    if (this.stream === controller) {
      // the broker closed it (not our drop): reconnect as a publisher would
      this.online = false
      if (!this.stopped) void this.connect().catch(() => undefined)
    }
  }

  /** The fault: the stream drops now; the work in flight keeps posting; back after `downMs`. */
  async drop(downMs: number): Promise<void> {
    this.counts.drops++
    this.generation++
    this.droppedAt = performance.now()
    const stream = this.stream
    this.stream = undefined
    this.online = false
    stream?.abort()
    await sleep(downMs)
    if (this.stopped) return
    await this.connect()
    this.counts.reconnects++
  }

  private async post(frame: TaskFrame, generation: number, what: PostRecord["what"], body: Record<string, unknown>) {
    let status = 0
    let errorType: string | undefined
    try {
      const response = await this.request(
        "POST",
        `/v1/publishers/sessions/${this.sessionId}/tasks/${frame.taskId}/${what}`,
        { ...body, attempt: frame.attempt }
      )
      status = response.status
      const text = await response.text()
      if (status !== 204) {
        try {
          errorType = (JSON.parse(text) as { error?: { type?: string } }).error?.type
        } catch {
          errorType = undefined
        }
      }
    } catch (error) {
      this.problems.push(`${this.name}: ${what} for ${frame.taskId} did not get an answer: ${String(error)}`)
    }
    this.posts.push({
      publisher: this.name,
      taskId: frame.taskId,
      attempt: frame.attempt,
      what,
      status,
      afterDrop: generation !== this.generation,
      ...(generation !== this.generation ? { sinceDropMs: Math.round(performance.now() - this.droppedAt) } : {}),
      ...(errorType === undefined ? {} : { errorType })
    })
    return status
  }

  private async work(frame: TaskFrame, key: string) {
    this.running.add(key)
    const generation = this.generation
    const directive: Directive | undefined = directiveOf(frame.body)
    try {
      if (directive === undefined) {
        await this.post(frame, generation, "error", { status: 400, message: "not a chaos request", retry: false })
        return
      }
      await this.post(frame, generation, "ack", {})
      await sleep(directive.w)
      if (directive.f !== 0) {
        await this.post(frame, generation, "error", {
          status: directive.f,
          message: injectedBody(directive).error.message,
          body: injectedBody(directive),
          retry: false
        })
        return
      }
      const id = `chatcmpl-raw-${frame.taskId}-${frame.attempt}`
      if (!frame.streaming) {
        await sleep(directive.d * directive.k)
        if (this.cancelled.has(frame.taskId)) return
        await this.post(frame, generation, "result", { status: 200, body: completion(id, "m", directive) })
        return
      }
      for (let i = 0; i < directive.k; i++) {
        if (i > 0 && directive.d > 0) await sleep(directive.d)
        // only a cancel frame stops the work: a dropped stream does not
        if (this.cancelled.has(frame.taskId)) return
        await this.post(frame, generation, "chunks", { chunks: [streamChunk(id, "m", { content: piece(directive) })] })
      }
      if (this.cancelled.has(frame.taskId)) return
      await this.post(frame, generation, "result", { status: 200 })
    } finally {
      this.running.delete(key)
    }
  }

  /** Nothing left running (for the drain). */
  idle(): boolean {
    return this.running.size === 0
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.heartbeat !== undefined) clearInterval(this.heartbeat)
    this.stream?.abort()
    this.stream = undefined
    this.online = false
  }
}
