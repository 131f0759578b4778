/**
 * The run's verdict: each invariant with its counts and, when violated, the
 * first examples. Inputs are what the clients saw, what the raw publishers'
 * posts were answered, what the real publishers printed, and the database's
 * tasks after the drain.
 */
import { contentOfChunks, directiveOf, expectedText, injectedMessage } from "./answer.js"
import type { CallRecord } from "./clients.js"
import type { PostRecord } from "./rawPublisher.js"

/** The error types of PROTOCOL.md's table (InternalError is a bug, not a type a call may carry). */
export const PROTOCOL_ERROR_TYPES: ReadonlySet<string> = new Set([
  "BadRequest",
  "Unauthorized",
  "Forbidden",
  "ModelNotFound",
  "TaskNotFound",
  "SessionNotFound",
  "LlmNotFound",
  "NameConflict",
  "TaskNotHeld",
  "TaskCancelled",
  "PayloadTooLarge",
  "RateLimited",
  "PublisherDisconnected",
  "PublisherOffline",
  "Timeout",
  "UpstreamError"
])

export const TERMINAL: ReadonlySet<string> = new Set(["completed", "error", "cancelled"])

export interface TaskRow {
  readonly id: string
  readonly status: string
  readonly streaming: boolean
  readonly request_body: unknown
  readonly response_status: number | null
  readonly response_body: unknown
  readonly error_type: string | null
  readonly error_message: string | null
  readonly attempts: number
  /** The stored chunks of a streamed task, in order. */
  readonly chunks: ReadonlyArray<string>
}

export interface Invariant {
  readonly name: string
  readonly ok: boolean
  /** What was checked, in counts. */
  readonly counts: string
  readonly examples: ReadonlyArray<string>
}

export interface Rate {
  readonly counted: number
  readonly succeeded: number
  readonly excluded: { readonly injected: number; readonly aborted: number; readonly disconnectAfterOutput: number }
  readonly rate: number
}

const isInjected = (call: CallRecord) => call.directive.f !== 0
/** The injected upstream error passed through: the broker relayed it, it did not make it. */
const isInjectedPassThrough = (call: CallRecord) =>
  isInjected(call) &&
  ((call.errorMessage ?? "").includes(injectedMessage(call.directive)) ||
    call.errorType === "chaos_injected" ||
    call.errorType === "UpstreamError")

export const successRate = (calls: ReadonlyArray<CallRecord>): Rate => {
  let injected = 0
  let aborted = 0
  let disconnectAfterOutput = 0
  let counted = 0
  let succeeded = 0
  for (const call of calls) {
    if (isInjected(call)) injected++
    else if (call.outcome === "aborted") aborted++
    else if (call.outcome === "failed" && call.errorType === "PublisherDisconnected") disconnectAfterOutput++
    else {
      counted++
      if (call.outcome === "ok") succeeded++
    }
  }
  return {
    counted,
    succeeded,
    excluded: { injected, aborted, disconnectAfterOutput },
    rate: counted === 0 ? 1 : succeeded / counted
  }
}

const describe = (call: CallRecord) =>
  `${call.nonce} ${call.kind}${call.abortAfterMs === undefined ? "" : ` abort@${call.abortAfterMs}ms`}` +
  `${isInjected(call) ? ` inject ${call.directive.f}` : ""} task ${call.taskId ?? "-"}: ${call.outcome}` +
  `${call.status === undefined ? "" : ` ${call.status}`}${call.errorType === undefined ? "" : ` ${call.errorType}`}` +
  `${call.inBand ? " (in-band)" : ""}${
    call.errorMessage === undefined ? "" : ` "${call.errorMessage.slice(0, 160)}"`
  }` +
  `${call.detail === undefined ? "" : ` — ${call.detail}`}`

const invariant = (name: string, checked: string, violations: ReadonlyArray<string>): Invariant => ({
  name,
  ok: violations.length === 0,
  counts: `${checked}; violations ${violations.length}`,
  examples: violations.slice(0, 8)
})

/** The stored answer of a completed task, as text. */
const storedText = (row: TaskRow): string => {
  if (row.streaming) return contentOfChunks(row.chunks)
  const body = row.response_body as { choices?: Array<{ message?: { content?: unknown } }> } | null
  const content = body?.choices?.[0]?.message?.content
  return typeof content === "string" ? content : `<no content: ${JSON.stringify(body)?.slice(0, 120)}>`
}

export interface Evidence {
  readonly calls: ReadonlyArray<CallRecord>
  readonly tasks: ReadonlyArray<TaskRow>
  readonly posts: ReadonlyArray<PostRecord>
  /** Lines the real publishers printed about a post the broker answered 5xx. */
  readonly publisherServerErrors: ReadonlyArray<string>
  /** Required success rate (undefined: reported, not asserted). */
  readonly threshold: number | undefined
}

/** `error_type` values that are not wire types themselves, and the type a waiter gets for them. */
const STORED_AS_WIRE: Record<string, string> = {
  MaxAttempts: "PublisherDisconnected",
  Expired: "PublisherOffline"
}

export const check = (evidence: Evidence): { invariants: Array<Invariant>; rate: Rate } => {
  const { calls, posts, tasks } = evidence
  const byId = new Map(tasks.map((t) => [t.id, t] as const))
  // the error type of a failed async task is the database's (the Task view has none), named as a
  // waiter on that task would be answered (src/tasks/TaskQueue.ts `outcome`)
  for (const call of calls) {
    if (call.kind === "async" && call.outcome === "failed" && call.errorType === undefined && call.taskId) {
      const stored = byId.get(call.taskId)?.error_type ?? undefined
      call.errorType = stored === undefined ? undefined : (STORED_AS_WIRE[stored] ?? stored)
    }
  }
  const invariants: Array<Invariant> = []

  const okCalls = calls.filter((c) => c.outcome === "ok")
  invariants.push(invariant(
    "every successful call got exactly its own complete answer",
    `${okCalls.length} complete answers`,
    calls.filter((c) => c.outcome === "wrong-answer" || c.outcome === "truncated").map(describe)
  ))

  const okWithTask = okCalls.filter((c) => c.taskId !== undefined)
  invariants.push(invariant(
    "a call answered in full is a completed task in the database",
    `${okWithTask.length} calls with a task id`,
    okWithTask.filter((c) => byId.get(c.taskId!)?.status !== "completed").map((c) =>
      `${describe(c)} — stored status ${byId.get(c.taskId!)?.status ?? "missing"}`
    )
  ))

  const told = calls.filter((c) =>
    c.kind !== "async" && c.outcome === "failed" && c.taskId !== undefined && !isInjected(c)
  )
  invariants.push(invariant(
    "a call told it failed is not a completed task in the database",
    `${told.length} failed calls with a task id`,
    told.filter((c) => byId.get(c.taskId!)?.status === "completed").map((c) =>
      `${describe(c)} — stored completed (attempts ${byId.get(c.taskId!)?.attempts}); raw posts: ${
        posts.filter((p) => p.taskId === c.taskId).map((p) =>
          `${p.publisher}#${p.attempt} ${p.what} ${p.status}${p.afterDrop ? ` (${p.sinceDropMs} ms after drop)` : ""}`
        ).join(", ") || "none"
      }`
    )
  ))

  const completed = tasks.filter((t) => t.status === "completed" && t.response_status === 200)
  invariants.push(invariant(
    "every completed task's stored answer is its own request's, once (no second result mixed in)",
    `${completed.length} completed tasks`,
    completed.flatMap((t) => {
      const directive = directiveOf(t.request_body)
      if (directive === undefined) return [`${t.id}: the stored request carries no directive`]
      const text = storedText(t)
      return text === expectedText(directive)
        ? []
        : [
          `${t.id} (${t.streaming ? "stream" : "whole"}, attempts ${t.attempts}): stored ${
            JSON.stringify(text.slice(0, 160))
          }, expected ${JSON.stringify(expectedText(directive).slice(0, 60))}…`
        ]
    })
  ))

  const accepted = new Map<string, Array<PostRecord>>()
  for (const post of posts) {
    if ((post.what === "result" || post.what === "error") && post.status === 204) {
      accepted.set(post.taskId, [...(accepted.get(post.taskId) ?? []), post])
    }
  }
  const stale = posts.filter((p) => p.afterDrop)
  invariants.push(invariant(
    "no task accepted two results (raw publishers' result/error posts answered 204)",
    `${accepted.size} tasks with an accepted result, ${posts.length} posts (${stale.length} after a drop: ${
      summarizeStatuses(stale)
    })`,
    [...accepted].filter(([, list]) => list.length > 1).map(([taskId, list]) =>
      `${taskId}: ${
        list.map((p) => `${p.publisher} attempt ${p.attempt} ${p.what}${p.afterDrop ? " (after drop)" : ""}`)
          .join(", ")
      }`
    )
  ))

  const asyncCalls = calls.filter((c) => c.kind === "async")
  invariants.push(invariant(
    "every async task reached a terminal state",
    `${asyncCalls.length} async tasks`,
    asyncCalls.filter((c) =>
      c.taskId !== undefined
        ? !TERMINAL.has(byId.get(c.taskId)?.status ?? "missing") || c.taskStatus === undefined
        : c.outcome !== "failed" // not created: only a failed POST (checked below) is fine
    ).map((c) => `${describe(c)} — stored status ${c.taskId ? byId.get(c.taskId)?.status : "no task"}`)
  ))

  invariants.push(invariant(
    "no task left pending/claimed/running after the drain",
    `${tasks.length} tasks`,
    tasks.filter((t) => !TERMINAL.has(t.status)).map((t) => `${t.id}: ${t.status} (attempts ${t.attempts})`)
  ))

  invariants.push(invariant(
    "no call hung (each settled before its deadline)",
    `${calls.length} calls`,
    calls.filter((c) => c.outcome === "hung").map(describe)
  ))

  const failed = calls.filter((c) => c.outcome === "failed")
  invariants.push(invariant(
    "every failed call carries a protocol error type",
    `${failed.length} failed calls`,
    failed.filter((c) => !PROTOCOL_ERROR_TYPES.has(c.errorType ?? "") && !isInjectedPassThrough(c)).map(describe)
  ))

  const fiveHundreds = calls.filter((c) =>
    c.statuses.includes(500) && !(c.directive.f === 500 && isInjectedPassThrough(c))
  )
  const postFiveHundreds = posts.filter((p) => p.status >= 500)
  invariants.push(invariant(
    "no HTTP 500 anywhere (an injected upstream 500 passed through is not the broker's)",
    `${
      calls.reduce((n, c) => n + c.statuses.length, 0)
    } client answers, ${posts.length} raw publisher posts, ${evidence.publisherServerErrors.length} publisher log lines about a 5xx`,
    [
      ...fiveHundreds.map(describe),
      ...postFiveHundreds.map((p) =>
        `${p.publisher} ${p.what} ${p.taskId}#${p.attempt}: ${p.status} ${p.errorType ?? ""}`
      ),
      ...evidence.publisherServerErrors
    ]
  ))

  const rate = successRate(calls)
  if (evidence.threshold !== undefined) {
    invariants.push(invariant(
      `>= ${
        (evidence.threshold * 100).toFixed(0)
      }% of calls succeed (excluding injected upstream errors, aborts, disconnect-after-output)`,
      `${rate.succeeded}/${rate.counted} = ${(rate.rate * 100).toFixed(2)}%`,
      rate.rate >= evidence.threshold
        ? []
        : calls.filter((c) =>
          c.outcome !== "ok" && !isInjected(c) && c.outcome !== "aborted" && c.errorType !== "PublisherDisconnected"
        ).map(describe)
    ))
  }
  return { invariants, rate }
}

const summarizeStatuses = (posts: ReadonlyArray<PostRecord>) => {
  const counts = new Map<string, number>()
  for (const p of posts) {
    const key = `${p.what} ${p.status}${p.errorType ? ` ${p.errorType}` : ""}`
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  return [...counts].map(([k, n]) => `${k} ×${n}`).join(", ") || "none"
}

/** Posts answered 204 after their stream was dropped: how long after the drop (a diagnostic line). */
export const lateAccepted = (posts: ReadonlyArray<PostRecord>): string => {
  const late = posts.filter((p) => p.afterDrop && p.status === 204).map((p) => p.sinceDropMs ?? -1).sort((a, b) =>
    a - b
  )
  return late.length === 0
    ? "no post was accepted after its stream dropped"
    : `${late.length} posts accepted after their stream dropped, ${late[0]}..${late[late.length - 1]} ms after the drop`
}
