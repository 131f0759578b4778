/**
 * Wake-ups in a big pool: `sessions` idle publisher sessions share one pool
 * (maxConcurrent 1 each), and `enqueues` tasks are posted to it with
 * `POST /v1/tasks`, first one after another, then all at once; the same
 * against a pool of one session, on the same broker, in the same run. Each
 * session completes every task it receives. Measured: PostgreSQL
 * transactions per enqueue (`pg_stat_database` of the broker's database: the
 * insert, the claims it caused, the result), and the latency of the
 * `POST /v1/tasks` answer (202), which waits for a database connection like
 * everything else in the broker. When every enqueue woke every session of
 * the pool, 500 sessions cost ~500 transactions per enqueue and the posts
 * queued behind the claims for the pool's connections.
 */
import pg from "pg"
import { request, sleep, summarize, type Summary } from "./harness.js"
import { type IdleSession, openIdleSession } from "./sessionScale.js"

export interface HerdPhase {
  /** PostgreSQL transactions in the broker's database per enqueue (insert, claims, result). */
  readonly transactionsPerEnqueue: number
  /** `POST /v1/tasks` answer times (ms). */
  readonly enqueueMs: Summary
  /** From the first post to the last task's frame reaching its session (ms). */
  readonly allReachedMs: number
  /** Posts that were not answered 202. */
  readonly failed: number
}

export interface HerdPool {
  readonly sessions: number
  readonly oneByOne: HerdPhase
  readonly burst: HerdPhase
}

/** Opens `count` idle sessions of `pool`, 64 at a time. */
const openPool = async (brokerUrl: string, token: string, pool: string, count: number) => {
  const open: Array<IdleSession> = []
  while (open.length < count) {
    const batch = Math.min(64, count - open.length)
    open.push(
      ...(await Promise.all(
        Array.from({ length: batch }, (_, i) => openIdleSession(brokerUrl, token, `${pool}-${open.length + i}`, pool))
      ))
    )
  }
  return open
}

const received = (open: ReadonlyArray<IdleSession>) => open.reduce((sum, s) => sum + s.received(), 0)

/** One phase: `enqueues` posts to `pool`, one after another or all at once, until every task reached a session. */
const phase = async (
  options: { readonly brokerUrl: string; readonly clientToken: string; readonly transactions: () => Promise<number> },
  pool: string,
  open: ReadonlyArray<IdleSession>,
  enqueues: number,
  concurrent: boolean
): Promise<HerdPhase> => {
  const post = async () => {
    const answer = await request(`${options.brokerUrl}/v1/tasks`, {
      headers: { authorization: `Bearer ${options.clientToken}` },
      body: { model: pool, path: "/v1/chat/completions", body: { model: pool, messages: [] } },
      timeoutMs: 60_000
    }).catch(() => undefined)
    return answer === undefined || answer.status !== 202 ? undefined : answer.totalMs
  }
  const seen = received(open)
  // PostgreSQL publishes a backend's counters within a second of it going idle
  await sleep(1500)
  const tx0 = await options.transactions()
  const started = performance.now()
  const times = concurrent
    ? await Promise.all(Array.from({ length: enqueues }, post))
    : await (async () => {
      const out: Array<number | undefined> = []
      for (let i = 0; i < enqueues; i++) out.push(await post())
      return out
    })()
  const stored = times.filter((t): t is number => t !== undefined)
  const deadline = performance.now() + 60_000
  while (received(open) - seen < stored.length && performance.now() < deadline) await sleep(5)
  const allReachedMs = performance.now() - started
  // the last results land, then their counters
  await sleep(1500)
  const transactions = (await options.transactions()) - tx0
  return {
    transactionsPerEnqueue: transactions / Math.max(1, stored.length),
    enqueueMs: summarize(stored),
    allReachedMs,
    failed: enqueues - stored.length
  }
}

/**
 * The scenario on a running broker: a pool of one session and a pool of
 * `sessions`, each measured one by one and in a burst. `databaseUrl` is the
 * broker's database (for its transaction count).
 */
export const herd = async (options: {
  readonly brokerUrl: string
  readonly databaseUrl: string
  readonly publisherToken: string
  readonly clientToken: string
  readonly sessions: number
  readonly enqueues: number
  readonly onProgress: (message: string) => void
}): Promise<{ readonly one: HerdPool; readonly many: HerdPool }> => {
  const stats = new pg.Client({ connectionString: options.databaseUrl })
  await stats.connect()
  const transactions = async () => {
    const r = await stats.query(
      "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()"
    )
    return Number((r.rows[0] as { n: string }).n)
  }
  const context = { brokerUrl: options.brokerUrl, clientToken: options.clientToken, transactions }
  const measurePool = async (pool: string, count: number): Promise<HerdPool> => {
    options.onProgress(`herd: opening ${count} idle session(s) of pool ${pool}`)
    const open = await openPool(options.brokerUrl, options.publisherToken, pool, count)
    await sleep(2000)
    options.onProgress(`herd: ${options.enqueues} enqueues to the pool of ${count}, one by one, then all at once`)
    const oneByOne = await phase(context, pool, open, options.enqueues, false)
    const burst = await phase(context, pool, open, options.enqueues, true)
    for (const s of open) s.close()
    await sleep(1000)
    return { sessions: count, oneByOne, burst }
  }
  try {
    const one = await measurePool("herd-one", 1)
    const many = await measurePool("herd-many", options.sessions)
    return { one, many }
  } finally {
    await stats.end()
  }
}
