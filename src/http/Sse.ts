/** Server-sent events framing shared by the task stream, streaming completions and task events. */
import { HttpServerResponse } from "@effect/platform"
import { Stream } from "effect"

/**
 * One SSE event. Multi-line data is split into several `data:` lines, as the
 * format requires (a reader joins them with "\n"); CR, LF and CRLF all end a
 * line there, so each counts as a break here.
 */
export const event = (name: string | undefined, data: string): string =>
  `${name === undefined ? "" : `event: ${name}\n`}${
    data.split(/\r\n|\r|\n/).map((line) => `data: ${line}`).join("\n")
  }\n\n`

export const comment = (text: string): string => `: ${text}\n\n`

export const response = <E>(body: Stream.Stream<string, E>, headers: Record<string, string> = {}) =>
  HttpServerResponse.stream(Stream.encodeText(body), {
    contentType: "text/event-stream",
    headers: { "cache-control": "no-cache", "x-accel-buffering": "no", ...headers }
  })
