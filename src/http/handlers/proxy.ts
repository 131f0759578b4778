/**
 * A `public` LLM is proxied by the broker itself: the request goes to the
 * row's URL (an OpenAI base URL ending in /v1) with its API key, and the
 * upstream's status, content type and body come back as they are, streamed.
 */
import { HttpServerResponse } from "@effect/platform"
import { Duration, Effect, Stream } from "effect"
import type { LlmRow } from "../../domain/Llm.js"
import { Timeout, UpstreamError } from "../../domain/Task.js"
import { joinUpstream } from "../../domain/Url.js"

export const proxyPublic = (
  row: LlmRow,
  path: string,
  body: Record<string, unknown>,
  /** How long the upstream may take to answer (its headers): `X-Relay-Timeout`, as for a relayed call. */
  timeout: Duration.Duration
) =>
  Effect.gen(function*() {
    const url = joinUpstream(row.url ?? "", path)
    const response = yield* Effect.tryPromise({
      try: (signal) =>
        fetch(url, {
          method: "POST",
          signal,
          headers: {
            "content-type": "application/json",
            ...(row.apiKey ? { authorization: `Bearer ${row.apiKey}` } : {})
          },
          body: JSON.stringify({ ...body, model: row.model })
        }),
      catch: (cause) => cause
    }).pipe(
      // the client is told which LLM and the error code; its address (internal, maybe) only goes to the log
      Effect.catchAll((cause) => {
        const inner = (cause as { cause?: { code?: unknown } } | undefined)?.cause?.code
        const code = typeof inner === "string" ? inner : "no answer"
        return Effect.zipRight(
          Effect.logWarning(`public LLM ${row.name}: ${url} unreachable`, cause),
          Effect.fail(
            new UpstreamError({ status: 502, message: `the public LLM '${row.name}' is unreachable (${code})` })
          )
        )
      }),
      // the fetch is aborted (its signal) when the time runs out
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () =>
          new Timeout({ message: `the public LLM '${row.name}' did not answer within ${Duration.format(timeout)}` })
      })
    )
    const contentType = response.headers.get("content-type") ?? "application/json"
    if (response.body === null) return HttpServerResponse.empty({ status: response.status })
    return HttpServerResponse.stream(
      Stream.fromReadableStream({
        evaluate: () => response.body!,
        onError: (cause) =>
          new UpstreamError({ status: 502, message: `the public LLM stream failed: ${String(cause)}` })
      }),
      { status: response.status, contentType }
    )
  })
