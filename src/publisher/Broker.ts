/**
 * The broker as a publisher talks to it: its publisher routes (PROTOCOL.md
 * "Publishers"), one function each, with every answer sorted into what the
 * publisher does next: go on, reconnect (`Disconnected`), stop one task
 * (`TaskStopped`) or give up (`PublisherFatal`).
 */
import { type HttpClient, HttpClientRequest } from "@effect/platform"
import { Data, Duration, Effect, Either, Schedule, Schema, Stream, Struct } from "effect"
import { describeParseError } from "../domain/Errors.js"
import { type RegisterRequest, Registration } from "../domain/Llm.js"
import { errorMessageOf, parseJson } from "./Answer.js"
import { type SseEvent, sseEvents } from "./Sse.js"

/** The publisher cannot go on: bad token, a name another session holds at start, bad providers. */
export class PublisherFatal extends Data.TaggedError("PublisherFatal")<{ readonly message: string }> {}

/** This connection is over (stream ended, broker unreachable, session gone): reconnect. */
export class Disconnected extends Data.TaggedError("Disconnected")<{ readonly reason: string }> {}

/** The broker no longer wants this task's posts (410 cancelled, 409 not held, 404 gone). */
export class TaskStopped
  extends Data.TaggedError("TaskStopped")<{ readonly status: number; readonly message: string }>
{}

/** What a publisher posts about a task it holds. */
export type TaskPost = "ack" | "chunks" | "result" | "error"

export interface Broker {
  /** The broker's base URL, without a trailing slash. */
  readonly server: string
  /**
   * Registers the providers (again, with `sessionId` when one is known). A
   * name another session holds is fatal at the first registration and a
   * reason to retry later (that session may be this publisher's old one).
   */
  readonly register: (
    request: typeof RegisterRequest.Encoded,
    first: boolean
  ) => Effect.Effect<SessionGranted, PublisherFatal | Disconnected>
  /**
   * One heartbeat, carrying each provider's upstream health: `forgotten`
   * when the broker no longer knows the session; other answers count as alive.
   */
  readonly heartbeat: (
    sessionId: string,
    providers: Record<string, { readonly healthy: boolean; readonly reason: string | null }>
  ) => Effect.Effect<"alive" | "forgotten", Disconnected>
  /** The session's task stream as events, until the broker closes it or it goes silent past three keepalives. */
  readonly taskEvents: (sessionId: string) => Stream.Stream<SseEvent, Disconnected>
  /** A post for a task: 2xx goes on; 410/409/404 stop the task; other failures retry a little, then stop it. */
  readonly postTask: (
    sessionId: string,
    taskId: string,
    what: TaskPost,
    body: Record<string, unknown>
  ) => Effect.Effect<void, TaskStopped>
  /** Closes the session: the broker re-queues what it still holds. */
  readonly goodbye: (sessionId: string) => Effect.Effect<void, Disconnected>
}

/**
 * What a publisher reads of a registration answer (the shared `Registration`'s
 * fields); the rows it also carries are for other clients, so their shape is
 * no reason for a publisher to stay offline.
 */
export const SessionGranted = Schema.Struct(Struct.pick(Registration.fields, "sessionId", "heartbeatIntervalMs"))
export type SessionGranted = typeof SessionGranted.Type
const decodeRegistration = Schema.decodeEither(Schema.parseJson(SessionGranted))

const postRetry = Schedule.exponential("100 millis").pipe(Schedule.intersect(Schedule.recurs(5)))

export const make = (http: HttpClient.HttpClient, server: string, token: string): Broker => {
  const base = server.replace(/\/+$/, "")

  /** One call to the broker: its status and body text. Transport failures are `Disconnected`. */
  const call = (method: "POST" | "GET" | "DELETE", path: string, body?: unknown) =>
    Effect.gen(function*() {
      let request = HttpClientRequest.make(method)(`${base}${path}`).pipe(HttpClientRequest.bearerToken(token))
      if (body !== undefined) request = HttpClientRequest.bodyUnsafeJson(request, body)
      const response = yield* http.execute(request)
      const text = yield* response.text
      return { status: response.status, text }
    }).pipe(
      Effect.catchTags({
        RequestError: (e) => Effect.fail(new Disconnected({ reason: `broker unreachable: ${e.message}` })),
        ResponseError: (e) => Effect.fail(new Disconnected({ reason: `broker answer broken: ${e.message}` }))
      })
    )

  const messageOf = (text: string) => errorMessageOf(parseJson(text), text)

  const register: Broker["register"] = (request, first) =>
    Effect.gen(function*() {
      const answer = yield* call("POST", "/v1/publishers/sessions", request)
      if (answer.status === 401 || answer.status === 403 || answer.status === 400) {
        return yield* new PublisherFatal({
          message: `the broker refused the registration (${answer.status}): ${messageOf(answer.text)}`
        })
      }
      if (answer.status === 409) {
        if (first) return yield* new PublisherFatal({ message: `name conflict: ${messageOf(answer.text)}` })
        return yield* new Disconnected({ reason: `name conflict, retrying: ${messageOf(answer.text)}` })
      }
      if (answer.status >= 300) {
        return yield* new Disconnected({ reason: `registration answered ${answer.status}: ${messageOf(answer.text)}` })
      }
      const registration = decodeRegistration(answer.text)
      if (Either.isLeft(registration)) {
        return yield* new Disconnected({
          reason: `registration answer unreadable: ${describeParseError(registration.left)}`
        })
      }
      return registration.right
    })

  const heartbeat: Broker["heartbeat"] = (sessionId, providers) =>
    Effect.map(
      call("POST", `/v1/publishers/sessions/${sessionId}/heartbeat`, { providers }),
      (answer) => (answer.status === 404 ? "forgotten" : "alive")
    )

  const taskEvents: Broker["taskEvents"] = (sessionId) =>
    Stream.unwrap(Effect.gen(function*() {
      const response = yield* http.execute(
        HttpClientRequest.get(`${base}/v1/publishers/sessions/${sessionId}/tasks`).pipe(
          HttpClientRequest.bearerToken(token),
          HttpClientRequest.setHeader("accept", "text/event-stream")
        )
      )
      if (response.status !== 200) {
        return yield* new Disconnected({ reason: `the task stream answered ${response.status}` })
      }
      return response.stream.pipe(
        Stream.decodeText(),
        Stream.splitLines,
        Stream.timeoutFail(() => new Disconnected({ reason: "the task stream went silent" }), Duration.seconds(45)),
        sseEvents
      )
    })).pipe(
      Stream.catchTags({
        RequestError: (e) => Stream.fail(new Disconnected({ reason: `broker unreachable: ${e.message}` })),
        ResponseError: (e) => Stream.fail(new Disconnected({ reason: `task stream broken: ${e.message}` }))
      })
    )

  const postTask: Broker["postTask"] = (sessionId, taskId, what, body) =>
    call("POST", `/v1/publishers/sessions/${sessionId}/tasks/${taskId}/${what}`, body).pipe(
      Effect.flatMap((answer): Effect.Effect<void, Disconnected | TaskStopped> =>
        answer.status < 300
          ? Effect.void
          : answer.status === 410 || answer.status === 409 || answer.status === 404
          ? Effect.fail(new TaskStopped({ status: answer.status, message: messageOf(answer.text) }))
          : Effect.fail(new Disconnected({ reason: `${what} answered ${answer.status}` }))
      ),
      Effect.retry({ while: (e: Disconnected | TaskStopped) => e._tag === "Disconnected", schedule: postRetry }),
      Effect.catchTag("Disconnected", (e) => Effect.fail(new TaskStopped({ status: 0, message: e.reason })))
    )

  const goodbye: Broker["goodbye"] = (sessionId) =>
    Effect.asVoid(call("DELETE", `/v1/publishers/sessions/${sessionId}`))

  return { server: base, register, heartbeat, taskEvents, postTask, goodbye }
}
