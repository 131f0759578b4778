/**
 * Which session actor of this broker instance looks when a pool has new work.
 *
 * Every enqueue (and every task back in the queue) is one pool wake; waking
 * every session of the pool made each one run the claim statement, ~500
 * transactions per task with 500 idle sessions (ARCHITECTURE.md "Several
 * instances": an enqueue wakes a bounded number of claimers). Here each wake
 * goes to ONE claimer: the session with the most free room in that pool, as
 * this registry counts it — the room its last claim found, plus the tasks it
 * has finished since, less the wakes it was given and has not answered yet
 * (ties: the one woken longest ago). Least-loaded dispatch is so chosen, not
 * raced for.
 *
 * The room counted here is a hint, never the truth (the claim statement
 * counts the truth), so a wake is passed on when the woken claimer could not
 * answer it:
 * - its claim filled its rows in the pool and unpinned work is still pending
 *   there (the claim statement says so): the wakes it took no task for go
 *   on, at least one;
 * - none of its rows could take work there (unhealthy, gone): its wakes go on;
 * - it went away (stream closed, replaced) before or during its claim.
 * A claimer whose claim left room, or left no unpinned work pending, has seen
 * every task it may take: its wakes are spent. The tasks it may not take are woken for by name: a task pinned
 * to a row wakes that row's session, a task handed back wakes another member
 * first (`handedBackBy`).
 *
 * A wake is dropped only when no claimer of the pool has room by this count:
 * each of them then either filled up (its actor claims again as soon as one
 * of its tasks ends), or has the pool's rows unhealthy (it claims when one
 * is healthy again). The actors' slow poll is the safety net under all of it.
 *
 * Choosing scans the pool's claimers: a few microseconds for a thousand, far
 * below the claim statement it saves.
 */
import { Effect, type Scope } from "effect"
import type { PoolWake } from "../signals/Signals.js"

/** A row a claimer serves: its name, pool and `maxConcurrent`. */
export interface Served {
  readonly name: string
  readonly pool: string
  readonly maxConcurrent: number
}

/**
 * A row as a claim found it: free slots before the claim, how many it took,
 * and whether it filled up with unpinned work of its pool still pending.
 */
export interface Found {
  readonly llmName: string
  readonly pool: string
  readonly free: number
  readonly taken: number
  readonly more: boolean
}

/** One session actor's place in the registry. */
export interface Claimer {
  /** The session's rows (at bind, after a re-registration): the pools it is woken for. */
  readonly serve: (rows: ReadonlyArray<Served>) => Effect.Effect<void>
  /** A claim starts: it answers the wakes given so far. */
  readonly claimStarts: Effect.Effect<void>
  /** The claim ended with this room per row: counts it, and passes on the wakes it could not answer. */
  readonly claimEnded: (rows: ReadonlyArray<Found>) => Effect.Effect<void>
  /** One of the session's tasks ended or left it (on `llmName`'s row, when known): one more free slot. */
  readonly freed: (llmName?: string | null) => Effect.Effect<void>
}

export interface ClaimersShape {
  /**
   * Adds a session's actor, woken by running `wake`; leaving (the scope
   * closing) passes on the wakes it had not answered.
   */
  readonly join: (sessionId: string, wake: Effect.Effect<void>) => Effect.Effect<Claimer, never, Scope.Scope>
  /** One unit of work in a pool: wakes the claimer that should look, if any has room. */
  readonly dispatch: (wake: PoolWake) => Effect.Effect<void>
}

/** A wake given to a member, with the pool it was counted against there. */
interface Given {
  readonly wake: PoolWake
  readonly pool: string
}

interface Member {
  readonly sessionId: string
  readonly wake: Effect.Effect<void>
  /** Row name → pool. */
  rows: Map<string, string>
  /** Pool → Σ maxConcurrent of its rows there. */
  capacity: Map<string, number>
  /** Pool → free slots as counted: the last claim's, plus tasks ended since. */
  room: Map<string, number>
  /** Pool → wakes given and not answered yet (waiting or being answered). */
  reserved: Map<string, number>
  /** Wakes given since the last claim started. */
  waiting: Array<Given>
  /** Wakes the running claim answers. */
  answering: Array<Given>
  /** Pool → tasks ended while a claim runs (the claim may not have seen them); undefined when none runs. */
  freedDuring: Map<string, number> | undefined
  /** When it was last given a wake (a counter): ties go to the one woken longest ago. */
  lastWoken: number
}

const add = (map: Map<string, number>, key: string, n: number) => map.set(key, (map.get(key) ?? 0) + n)

export const make: Effect.Effect<ClaimersShape> = Effect.sync(() => {
  const pools = new Map<string, Set<Member>>()
  const byRow = new Map<string, Member>()
  let clock = 0

  /** The pool a wake counts against for this member: a pinned row's, else the wake's. */
  const poolOf = (member: Member, wake: PoolWake) =>
    (wake.llmName != null ? member.rows.get(wake.llmName) : undefined) ?? wake.pool

  const give = (member: Member, wake: PoolWake) => {
    const pool = poolOf(member, wake)
    member.waiting.push({ wake, pool })
    add(member.reserved, pool, 1)
    member.lastWoken = ++clock
    return member.wake
  }

  /**
   * The claimer for a unit of unpinned work in `pool`: most room left after
   * the wakes it holds, then woken longest ago; never `skip`. The session
   * that handed the task back only when no other claimer has room (with
   * another member online elsewhere its claim skips the task: one wasted
   * statement, no loop).
   */
  const choose = (pool: string, handedBackBy: string | null | undefined, skip: Member | undefined) => {
    let best: Member | undefined
    let bestScore = 0
    let fallback: Member | undefined
    for (const member of pools.get(pool) ?? []) {
      if (member === skip) continue
      const room = member.room.get(pool) ?? 0
      if (room <= 0) continue
      if (member.sessionId === handedBackBy) {
        fallback = member
        continue
      }
      const score = room - (member.reserved.get(pool) ?? 0)
      if (best === undefined || score > bestScore || (score === bestScore && member.lastWoken < best.lastWoken)) {
        best = member
        bestScore = score
      }
    }
    return best ?? fallback
  }

  const dispatchFrom = (wake: PoolWake, skip: Member | undefined): Effect.Effect<void> => {
    if (wake.llmName != null) {
      // pinned: only the row's session can take it, room or not (one statement)
      const owner = byRow.get(wake.llmName)
      return owner === undefined || owner === skip ? Effect.void : give(owner, wake)
    }
    const chosen = choose(wake.pool, wake.handedBackBy, skip)
    return chosen === undefined ? Effect.void : give(chosen, wake)
  }

  const dispatch = (wake: PoolWake) => Effect.suspend(() => dispatchFrom(wake, undefined))

  const passOn = (wakes: ReadonlyArray<PoolWake>, from: Member) =>
    Effect.forEach(wakes, (wake) => dispatchFrom(wake, from), { discard: true })

  const release = (member: Member, given: ReadonlyArray<Given>) => {
    for (const { pool } of given) add(member.reserved, pool, -1)
  }

  const serve = (member: Member, rows: ReadonlyArray<Served>) =>
    Effect.sync(() => {
      for (const [name] of member.rows) if (byRow.get(name) === member) byRow.delete(name)
      const capacity = new Map<string, number>()
      for (const row of rows) add(capacity, row.pool, row.maxConcurrent)
      for (const pool of member.capacity.keys()) {
        if (!capacity.has(pool)) {
          pools.get(pool)?.delete(member)
          if (pools.get(pool)?.size === 0) pools.delete(pool)
          member.room.delete(pool)
        }
      }
      for (const [pool, slots] of capacity) {
        // new here: all its room, until its claim (which follows) counts it
        if (!member.capacity.has(pool)) member.room.set(pool, slots)
        else member.room.set(pool, Math.min(slots, member.room.get(pool) ?? 0))
        const members = pools.get(pool) ?? new Set()
        members.add(member)
        pools.set(pool, members)
      }
      member.capacity = capacity
      member.rows = new Map(rows.map((row) => [row.name, row.pool]))
      for (const row of rows) byRow.set(row.name, member)
    })

  const claimStarts = (member: Member) =>
    Effect.sync(() => {
      member.answering = [...member.answering, ...member.waiting]
      member.waiting = []
      member.freedDuring = new Map()
    })

  const claimEnded = (member: Member, found: ReadonlyArray<Found>) =>
    Effect.suspend(() => {
      const answered = member.answering.map((given) => given.wake)
      release(member, member.answering)
      member.answering = []
      const left = new Map<string, number>()
      const taken = new Map<string, number>()
      const more = new Set<string>()
      for (const row of found) {
        add(left, row.pool, Math.max(0, row.free - row.taken))
        add(taken, row.pool, row.taken)
        if (row.more) more.add(row.pool)
      }
      for (const [pool, slots] of member.capacity) {
        member.room.set(pool, Math.min(slots, (left.get(pool) ?? 0) + (member.freedDuring?.get(pool) ?? 0)))
      }
      member.freedDuring = undefined
      // The wakes it could not answer go on. A wake its own hand-back earned it
      // (no one else had room) is spent: passing it on would come back here.
      const onward: Array<PoolWake> = []
      const unpinned = answered.filter((wake) => wake.llmName == null && wake.handedBackBy !== member.sessionId)
      for (const pool of new Set([...unpinned.map((wake) => wake.pool), ...more])) {
        const mine = unpinned.filter((wake) => wake.pool === pool)
        const room = left.get(pool)
        const count = room === undefined
          // no row of it could take work there (unhealthy, gone): every wake goes on
          ? mine.length
          : room > 0 || !more.has(pool)
          // room to spare, or nothing left for anyone: it saw all it may take
          ? 0
          // it filled up and work is left: the wakes it took no task for go on, at least one
          : Math.max(mine.length - (taken.get(pool) ?? 0), 1)
        // hand-backs first: a claimer woken without one may be the session that handed it back
        const ordered = [
          ...mine.filter((wake) => wake.handedBackBy != null),
          ...mine.filter((w) => w.handedBackBy == null)
        ]
        for (let i = 0; i < count; i++) onward.push(ordered[i] ?? { pool })
      }
      return passOn(onward, member)
    })

  const freed = (member: Member, llmName?: string | null) =>
    Effect.sync(() => {
      const pool = llmName != null ? member.rows.get(llmName) : undefined
      for (const p of pool !== undefined ? [pool] : member.capacity.keys()) {
        member.room.set(p, Math.min(member.capacity.get(p) ?? 0, (member.room.get(p) ?? 0) + 1))
        if (member.freedDuring !== undefined) add(member.freedDuring, p, 1)
      }
    })

  const leave = (member: Member) =>
    Effect.suspend(() => {
      for (const pool of member.capacity.keys()) {
        pools.get(pool)?.delete(member)
        if (pools.get(pool)?.size === 0) pools.delete(pool)
      }
      for (const [name] of member.rows) if (byRow.get(name) === member) byRow.delete(name)
      const unanswered = [...member.answering, ...member.waiting].map((given) => given.wake)
      member.answering = []
      member.waiting = []
      // its own pinned rows are gone with it; everything else goes to another claimer
      return passOn(unanswered.filter((wake) => wake.llmName == null || byRow.has(wake.llmName)), member)
    })

  const join = (sessionId: string, wake: Effect.Effect<void>) =>
    Effect.map(
      Effect.acquireRelease(
        Effect.sync((): Member => ({
          sessionId,
          wake,
          rows: new Map(),
          capacity: new Map(),
          room: new Map(),
          reserved: new Map(),
          waiting: [],
          answering: [],
          freedDuring: undefined,
          lastWoken: 0
        })),
        leave
      ),
      (member): Claimer => ({
        serve: (rows) => serve(member, rows),
        claimStarts: claimStarts(member),
        claimEnded: (found) => claimEnded(member, found),
        freed: (llmName) => freed(member, llmName)
      })
    )

  return { join, dispatch } satisfies ClaimersShape
})
