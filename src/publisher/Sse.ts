/**
 * Server-sent events as a client reads them: the broker's task stream and a
 * streaming upstream answer are both parsed here.
 */
import { Option, Stream } from "effect"

export interface SseEvent {
  readonly event: string
  readonly data: string
}

/** Server-sent events from a stream of lines (comments and unknown fields skipped). */
export const sseEvents = <E, R>(lines: Stream.Stream<string, E, R>): Stream.Stream<SseEvent, E, R> =>
  lines.pipe(
    Stream.mapAccum({ event: "", data: [] as Array<string> }, (state, line): [
      { event: string; data: Array<string> },
      Option.Option<SseEvent>
    ] => {
      if (line === "") {
        return state.data.length === 0 && state.event === ""
          ? [state, Option.none()]
          : [{ event: "", data: [] }, Option.some({ event: state.event || "message", data: state.data.join("\n") })]
      }
      if (line.startsWith(":")) return [state, Option.none()]
      const colon = line.indexOf(":")
      const field = colon === -1 ? line : line.slice(0, colon)
      const value = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /, "")
      if (field === "event") return [{ ...state, event: value }, Option.none()]
      if (field === "data") return [{ ...state, data: [...state.data, value] }, Option.none()]
      return [state, Option.none()]
    }),
    Stream.filterMap((event) => event)
  )
