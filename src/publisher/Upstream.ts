/**
 * The local OpenAI-compatible server (vLLM, llama.cpp server, Ollama): one
 * task's request to it, and its answer sorted into a failure to report, a
 * whole JSON answer, or a stream of SSE data to relay as it comes.
 */
import { type HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import { Effect, Predicate, Stream } from "effect"
import type { TaskFrame } from "../domain/Frames.js"
import { joinUpstream } from "../domain/Url.js"
import { errorMessageOf, parseJson } from "./Answer.js"
import type { Provider } from "./Config.js"
import { sseEvents } from "./Sse.js"

/** Why the upstream gave no answer to pass on, as the broker's error post takes it. */
export type UpstreamFailure = {
  readonly status: number
  readonly message: string
  readonly body?: unknown
}

export type UpstreamAnswer =
  | { readonly _tag: "Failed"; readonly failure: UpstreamFailure }
  /**
   * No answer at all before any output (connection refused, DNS failure, the
   * connection dropped before the headers): another member may serve the
   * task. `cause` names the real reason (`ECONNREFUSED 127.0.0.1:9999`).
   */
  | { readonly _tag: "Unreachable"; readonly failure: UpstreamFailure; readonly cause: string }
  /** A JSON answer (an answer that is not JSON is `Failed`). */
  | { readonly _tag: "Whole"; readonly status: number; readonly body: unknown }
  /** A streamed answer: `forEachData` runs `f` on each event's data, up to `[DONE]`. */
  | {
    readonly _tag: "Streaming"
    readonly status: number
    readonly forEachData: (f: (data: string) => Effect.Effect<unknown>) => Effect.Effect<void, UpstreamFailure>
  }

/** The upstream failed before or instead of answering: its status and message. */
const failureOf = (response: HttpClientResponse.HttpClientResponse) =>
  Effect.map(Effect.orElseSucceed(response.text, () => ""), (text): UpstreamFailure => {
    const body = parseJson(text)
    return {
      status: response.status,
      message: errorMessageOf(body, text.slice(0, 500) || `upstream answered ${response.status}`),
      ...(body !== undefined ? { body } : {})
    }
  })

/** Sends a task's request to the provider's upstream, its `model` rewritten to the provider's. */
export const call = (
  http: HttpClient.HttpClient,
  provider: Provider,
  task: Pick<TaskFrame, "path" | "streaming" | "body">
): Effect.Effect<UpstreamAnswer> =>
  Effect.gen(function*() {
    const url = joinUpstream(provider.upstream, task.path)
    const body = typeof task.body === "object" && task.body !== null
      ? { ...task.body, model: provider.model }
      : { model: provider.model }
    let request = HttpClientRequest.post(url).pipe(HttpClientRequest.bodyUnsafeJson(body))
    if (provider.apiKey !== undefined) request = HttpClientRequest.bearerToken(request, provider.apiKey)
    // what the broker passes on to clients names the provider, never the upstream's address (PROTOCOL v1.1);
    // the publisher's own log names the address and the real cause
    const unreachable = (e: unknown): UpstreamFailure => ({
      status: 502,
      message: `the upstream of '${provider.name}' is unreachable (${errorCode(transportCause(e))})`
    })
    const response = yield* Effect.either(http.execute(request))
    if (response._tag === "Left") {
      return { _tag: "Unreachable", failure: unreachable(response.left), cause: transportCause(response.left) } as const
    }
    const res = response.right
    if (res.status >= 400) return { _tag: "Failed", failure: yield* failureOf(res) } as const
    const whole = !task.streaming || (res.headers["content-type"] ?? "").toLowerCase().includes("application/json")
    if (!whole) {
      return {
        _tag: "Streaming",
        status: res.status,
        forEachData: (f) =>
          res.stream.pipe(
            Stream.decodeText(),
            Stream.splitLines,
            sseEvents,
            Stream.map((event) => event.data),
            Stream.takeWhile((data) => data !== "[DONE]"),
            Stream.runForEach(f),
            Effect.mapError(unreachable)
          )
      } as const
    }
    const text = yield* Effect.either(res.text)
    if (text._tag === "Left") return { _tag: "Failed", failure: unreachable(text.left) } as const
    const parsed = parseJson(text.right)
    if (parsed === undefined) {
      // an OpenAI-compatible answer is JSON; anything else must not pass for a success
      const failure: UpstreamFailure = {
        status: 502,
        message: `the upstream of '${provider.name}' answered ${res.status} with a body that is not JSON: ${
          JSON.stringify(text.right.slice(0, 200))
        }`
      }
      return { _tag: "Failed", failure } as const
    }
    return { _tag: "Whole", status: res.status, body: parsed } as const
  })

/** The system error code of a transport cause (`ECONNREFUSED`), without the address that follows it. */
export const errorCode = (cause: string): string => /^E[A-Z_]+/.exec(cause)?.[0] ?? "no answer"

/**
 * The real reason a request got no answer, from the error's `cause` chain
 * (the HTTP client's own message is only "Transport error"): the system
 * error's code and where it happened (`ECONNREFUSED 127.0.0.1:9999`,
 * `ENOTFOUND llm.internal`), or the innermost message.
 */
export const transportCause = (error: unknown): string => {
  let innermost: string | undefined
  let current: unknown = error
  for (let depth = 0; depth < 10 && Predicate.isObject(current); depth++) {
    const code = Predicate.hasProperty(current, "code") ? current.code : undefined
    if (typeof code === "string" && code !== "") {
      const address = Predicate.hasProperty(current, "address") ? current.address : undefined
      const port = Predicate.hasProperty(current, "port") ? current.port : undefined
      const hostname = Predicate.hasProperty(current, "hostname") ? current.hostname : undefined
      if (typeof address === "string") return `${code} ${address}${typeof port === "number" ? `:${port}` : ""}`
      if (typeof hostname === "string") return `${code} ${hostname}`
      const message = Predicate.hasProperty(current, "message") ? current.message : undefined
      return typeof message === "string" && message.includes(code) ? message : code
    }
    const message = Predicate.hasProperty(current, "message") ? current.message : undefined
    if (typeof message === "string" && message !== "") innermost = message
    // an AggregateError (every address of a host refused) carries its reasons in `errors`
    const errors = Predicate.hasProperty(current, "errors") ? current.errors : undefined
    current = Array.isArray(errors) && errors.length > 0
      ? errors[0]
      : Predicate.hasProperty(current, "cause")
      ? current.cause
      : undefined
  }
  return innermost ?? String(error)
}

/** A choice's field, or undefined (a choice may be anything in a broken answer). */
const field = (choice: unknown, key: string): unknown => Predicate.hasProperty(choice, key) ? choice[key] : undefined

/**
 * A whole chat or text completion as the one stream chunk that carries all of
 * it (what the upstream would have streamed, in one piece); undefined for
 * anything else.
 */
export const wholeAsChunk = (body: unknown): Record<string, unknown> | undefined => {
  if (!Predicate.isRecord(body)) return undefined
  const choices: ReadonlyArray<unknown> | undefined = Array.isArray(body.choices) ? body.choices : undefined
  if (choices === undefined) return undefined
  if (body.object === "chat.completion") {
    return {
      ...body,
      object: "chat.completion.chunk",
      choices: choices.map((c, i) => ({
        index: field(c, "index") ?? i,
        delta: field(c, "message") ?? {},
        finish_reason: field(c, "finish_reason") ?? null
      }))
    }
  }
  if (body.object === "text_completion") return { ...body }
  return undefined
}
