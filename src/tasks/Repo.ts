/**
 * SQL of the task queue (`llm_relay.inference_tasks`,
 * `llm_relay.inference_task_chunks`). Every transition is one conditional
 * statement: it names the states it may leave (and, for a publisher, the
 * holder and the attempt) and returns the rows it changed; no rows back means
 * the race was lost. Times are parameters taken from `Clock` by the caller.
 * Rows are decoded with `SqlSchema` (pg hands `timestamptz` over as `Date`,
 * `bigint` as a string); a row that does not decode is a defect.
 */
import { SqlClient, SqlSchema, type Statement } from "@effect/sql"
import { Context, Effect, Layer, Metric, Option, Schema, Struct } from "effect"
import { Task, TaskId, TaskStatus } from "../domain/Task.js"

/** A row of `llm_relay.inference_tasks` as the database returns it (names camel-cased). */
export const TaskRow = Schema.Struct({
  id: TaskId,
  /** Enqueue order (bigint: the driver hands it over as a string). */
  seq: Schema.Union(Schema.Number, Schema.NumberFromString),
  status: TaskStatus,
  pool: Schema.String,
  llmName: Schema.NullOr(Schema.String),
  model: Schema.String,
  tier: Schema.NullOr(Schema.String),
  path: Schema.String,
  streaming: Schema.Boolean,
  priority: Schema.Int,
  requestBody: Schema.Unknown,
  responseStatus: Schema.NullOr(Schema.Int),
  responseBody: Schema.Unknown,
  errorType: Schema.NullOr(Schema.String),
  errorMessage: Schema.NullOr(Schema.String),
  claimedBy: Schema.NullOr(Schema.String),
  claimedLlm: Schema.NullOr(Schema.String),
  attempts: Schema.Int,
  outputStarted: Schema.Boolean,
  chunkCount: Schema.Int,
  ownerId: Schema.String,
  agentId: Schema.NullOr(Schema.String),
  createdAt: Schema.DateFromSelf,
  updatedAt: Schema.DateFromSelf,
  claimedAt: Schema.NullOr(Schema.DateFromSelf),
  streamStartedAt: Schema.NullOr(Schema.DateFromSelf),
  completedAt: Schema.NullOr(Schema.DateFromSelf)
})
export type TaskRow = typeof TaskRow.Type

export const taskFromRow = (row: TaskRow): Task =>
  // The row was decoded already: skip re-validating it (a hot path).
  new Task({
    id: row.id,
    status: row.status,
    model: row.model,
    pool: row.pool,
    llmName: row.llmName ?? row.claimedLlm,
    path: row.path,
    streaming: row.streaming,
    priority: row.priority,
    ownerId: row.ownerId,
    agentId: row.agentId,
    claimedBy: row.claimedBy,
    attempts: row.attempts,
    createdAt: row.createdAt,
    claimedAt: row.claimedAt,
    streamStartedAt: row.streamStartedAt,
    completedAt: row.completedAt,
    responseStatus: row.responseStatus,
    responseBody: row.responseBody ?? null,
    errorMessage: row.errorMessage
  }, true)

/** A task a claim took, with the upstream model of the row it went to. */
export const ClaimedRow = Schema.Struct({ ...TaskRow.fields, llmModel: Schema.String })
export type ClaimedRow = typeof ClaimedRow.Type

/** A row of a held task that a revert or timeout touched. */
export const Moved = Schema.Struct({
  id: TaskId,
  status: TaskStatus,
  pool: Schema.String,
  /** The row the task is pinned to, if any: only its session can take it again. */
  llmName: Schema.NullOr(Schema.String),
  claimedBy: Schema.NullOr(Schema.String),
  previousHolder: Schema.NullOr(Schema.String),
  /** The row of the previous holder that held it. */
  previousLlm: Schema.NullOr(Schema.String)
})
export type Moved = typeof Moved.Type

/** A new pending task, as `insert` stores it: the columns a client's request sets. */
export const NewTask = Schema.Struct({
  ...Struct.pick(
    TaskRow.fields,
    "pool",
    "llmName",
    "model",
    "tier",
    "path",
    "streaming",
    "priority",
    "requestBody",
    "ownerId",
    "agentId"
  ),
  id: Schema.String,
  /** The client's Idempotency-Key, if it sent one. */
  idempotencyKey: Schema.NullOr(Schema.String)
})
export type NewTask = typeof NewTask.Type

/** A page of a listing: newest first, after the keyset cursor when given. */
export const ListFilter = Schema.Struct({
  ownerId: Schema.optional(Schema.String),
  status: Schema.optional(TaskStatus),
  agentId: Schema.optional(Schema.String),
  after: Schema.optional(Schema.Struct({ createdAt: Schema.DateFromSelf, id: Schema.String })),
  limit: Schema.Int
})
export type ListFilter = typeof ListFilter.Type

/** The fence of a publisher's post: the holder and, when given, the attempt. */
export const Holder = Schema.Struct({
  sessionId: Schema.String,
  taskId: Schema.String,
  attempt: Schema.optional(Schema.Int)
})
export type Holder = typeof Holder.Type

/** One stored batch of a task's output. */
export const ChunkBatch = Schema.Struct({ seq: Schema.Int, chunks: Schema.Array(Schema.String) })
export type ChunkBatch = typeof ChunkBatch.Type

/**
 * A row of the claiming session as the claim found it: its free slots before
 * the claim, how many it took, and whether it filled up with unpinned work of
 * its pool still pending (`more`: another member may take it).
 */
export interface Room {
  readonly llmName: string
  readonly pool: string
  readonly free: number
  readonly taken: number
  readonly more: boolean
}

/** What one claim took: the tasks, and whether a row filled up (`full`) or kept room (`roomLeft`). */
export interface Claimed {
  readonly tasks: ReadonlyArray<ClaimedRow>
  readonly full: boolean
  readonly roomLeft: boolean
  /** Each active, healthy row of the session (a row absent here has no room: inactive or unhealthy). */
  readonly rooms: ReadonlyArray<Room>
}

export interface TaskRepoShape {
  /** None when the owner already has a task with this Idempotency-Key. */
  /** None: the owner has `limit` tasks pending, or (with a key) the key's task exists. */
  readonly insert: (task: NewTask, at: Date, limit: number) => Effect.Effect<Option.Option<TaskRow>>
  /** Whether the owner has fewer than `limit` tasks pending. */
  readonly hasPendingRoom: (ownerId: string, limit: number) => Effect.Effect<boolean>
  /** The owner's task with this Idempotency-Key, and whether it was made for the same path and body. */
  readonly findByKey: (
    ownerId: string,
    key: string,
    path: string,
    body: unknown
  ) => Effect.Effect<Option.Option<{ readonly row: TaskRow; readonly same: boolean }>>
  /** Idempotency-Keys of tasks made before the cutoff are forgotten (they may be used again); how many. */
  readonly forgetKeys: (before: Date) => Effect.Effect<number>
  readonly find: (id: string) => Effect.Effect<Option.Option<TaskRow>>
  readonly list: (filter: ListFilter) => Effect.Effect<ReadonlyArray<TaskRow>>
  readonly findPendingForPools: (pools: ReadonlyArray<string>, limit: number) => Effect.Effect<ReadonlyArray<TaskRow>>
  readonly claimFor: (sessionId: string, at: Date) => Effect.Effect<Claimed>
  readonly ack: (h: Holder, at: Date) => Effect.Effect<boolean>
  readonly appendChunks: (
    h: Holder,
    chunks: ReadonlyArray<string>,
    at: Date
  ) => Effect.Effect<Option.Option<{ readonly seq: number }>>
  readonly complete: (h: Holder, status: number, body: unknown, at: Date) => Effect.Effect<Option.Option<TaskRow>>
  readonly fail: (
    h: Holder,
    error: { message: string; status: number; body?: unknown },
    at: Date
  ) => Effect.Effect<Option.Option<TaskRow>>
  /**
   * The holder hands a task back before any output (`POST error` with
   * `retry`): back to `pending`, remembering who handed it back, or at the
   * attempt limit `error` `UpstreamError` with its message. None when the
   * fence does not match or output was sent.
   */
  readonly handBack: (
    h: Holder,
    error: { message: string; status: number; body?: unknown },
    maxAttempts: number,
    at: Date
  ) => Effect.Effect<Option.Option<TaskRow>>
  /** Tasks the session holds `claimed` (not acknowledged), oldest claim first, as claim returns them. */
  readonly unacknowledged: (sessionId: string) => Effect.Effect<ReadonlyArray<ClaimedRow>>
  readonly cancel: (id: string, reason: string, at: Date) => Effect.Effect<Option.Option<TaskRow>>
  /** Cancels the task only while nobody has claimed it, recording why (`error_type`). */
  readonly cancelPending: (
    id: string,
    reason: string,
    errorType: string,
    at: Date
  ) => Effect.Effect<Option.Option<TaskRow>>
  readonly revertHeldBy: (sessionId: string, maxAttempts: number, at: Date) => Effect.Effect<ReadonlyArray<Moved>>
  readonly revertForeign: (instanceId: string, maxAttempts: number, at: Date) => Effect.Effect<ReadonlyArray<Moved>>
  readonly revertUnacked: (claimedBefore: Date, maxAttempts: number, at: Date) => Effect.Effect<ReadonlyArray<Moved>>
  readonly expirePending: (createdBefore: Date, message: string, at: Date) => Effect.Effect<ReadonlyArray<Moved>>
  readonly timeoutRunning: (claimedBefore: Date, message: string, at: Date) => Effect.Effect<ReadonlyArray<Moved>>
  readonly deleteFinished: (completedBefore: Date, batch: number) => Effect.Effect<number>
  /** Erases the request, response and chunks of up to `batch` tasks finished before the cutoff. */
  readonly eraseBodies: (completedBefore: Date, batch: number, at: Date) => Effect.Effect<number>
  readonly chunksFrom: (taskId: string, fromSeq: number) => Effect.Effect<ReadonlyArray<ChunkBatch>>
}

/**
 * Claim statements run by this process: what a wake-up costs the database
 * (each is one transaction). Tests and benchmarks read it with `Metric.value`.
 */
export const claimStatements = Metric.counter("llm_relay_claim_statements_total", {
  description: "claim statements run (one transaction each)",
  incremental: true
})

/**
 * A row of the claim statement: a capacity row of the session (its name and
 * free slots), with the task claimed for it, or with none.
 */
const Capacity = { capName: Schema.String, capPool: Schema.String, capFree: Schema.Int, capMore: Schema.Boolean }
const CapacityRow = Schema.Union(
  Schema.Struct({ ...Capacity, id: Schema.Null }),
  Schema.Struct({ ...ClaimedRow.fields, ...Capacity })
)

const json = (value: unknown) => (value === undefined ? null : JSON.stringify(value))

const At = Schema.DateFromSelf
const Id = Schema.Struct({ id: Schema.String })

export const make: Effect.Effect<TaskRepoShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const held = sql`status IN ('claimed', 'running')`
  const fence = (h: Holder) =>
    h.attempt === undefined
      ? sql`id = ${h.taskId} AND claimed_by = ${h.sessionId} AND ${held}`
      : sql`id = ${h.taskId} AND claimed_by = ${h.sessionId} AND ${held} AND attempts = ${h.attempt}`

  /**
   * Stores a task unless its owner has `limit` pending already (the count
   * stops at the limit: at most `limit` index entries read). With an
   * Idempotency-Key, a task of that owner and key already stored wins.
   * No row back: over the limit, or (with a key) the key's task exists.
   */
  const insertTask = SqlSchema.findOne({
    Request: Schema.Struct({ task: NewTask, at: At, limit: Schema.Int }),
    Result: TaskRow,
    execute: ({ at, limit, task }) => {
      const room = sql`(SELECT count(*) FROM (SELECT 1 FROM llm_relay.inference_tasks
        WHERE owner_id = ${task.ownerId} AND status = 'pending' LIMIT ${limit}) AS p) < ${limit}`
      return task.idempotencyKey === null
        ? sql`
      INSERT INTO llm_relay.inference_tasks (id, pool, llm_name, model, tier, path, streaming, priority, request_body,
                                   owner_id, agent_id, created_at, updated_at)
      SELECT ${task.id}, ${task.pool}, ${task.llmName}, ${task.model}, ${task.tier}, ${task.path},
              ${task.streaming}, ${task.priority}, ${json(task.requestBody)}::jsonb, ${task.ownerId},
              ${task.agentId}, ${at}::timestamptz, ${at}::timestamptz
      WHERE ${room}
      RETURNING *`
        : sql`
      INSERT INTO llm_relay.inference_tasks (id, pool, llm_name, model, tier, path, streaming, priority, request_body,
                                   owner_id, agent_id, created_at, updated_at, idempotency_key)
      SELECT ${task.id}, ${task.pool}, ${task.llmName}, ${task.model}, ${task.tier}, ${task.path},
              ${task.streaming}, ${task.priority}, ${json(task.requestBody)}::jsonb, ${task.ownerId},
              ${task.agentId}, ${at}::timestamptz, ${at}::timestamptz, ${task.idempotencyKey}
      WHERE ${room}
      ON CONFLICT (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
      RETURNING *`
    }
  })
  const insert = (task: NewTask, at: Date, limit: number) => Effect.orDie(insertTask({ task, at, limit }))

  const pendingRoom = SqlSchema.single({
    Request: Schema.Struct({ ownerId: Schema.String, limit: Schema.Int }),
    Result: Schema.Struct({ room: Schema.Boolean }),
    execute: ({ limit, ownerId }) =>
      sql`SELECT (SELECT count(*) FROM (SELECT 1 FROM llm_relay.inference_tasks
        WHERE owner_id = ${ownerId} AND status = 'pending' LIMIT ${limit}) AS p) < ${limit} AS room`
  })
  const hasPendingRoom = (ownerId: string, limit: number) =>
    pendingRoom({ ownerId, limit }).pipe(Effect.map(({ room }) => room), Effect.orDie)

  const findKeyed = SqlSchema.findOne({
    Request: Schema.Struct({ ownerId: Schema.String, key: Schema.String, path: Schema.String, body: Schema.Unknown }),
    Result: Schema.Struct({ ...TaskRow.fields, sameRequest: Schema.Boolean }),
    execute: ({ body, key, ownerId, path }) =>
      sql`
      SELECT *, (path = ${path} AND request_body = ${json(body)}::jsonb) AS same_request
      FROM llm_relay.inference_tasks WHERE owner_id = ${ownerId} AND idempotency_key = ${key}`
  })
  const findByKey = (ownerId: string, key: string, path: string, body: unknown) =>
    findKeyed({ ownerId, key, path, body }).pipe(
      Effect.map(Option.map(({ sameRequest, ...row }) => ({ row, same: sameRequest }))),
      Effect.orDie
    )

  const forgetKeyRows = SqlSchema.findAll({
    Request: At,
    Result: Id,
    execute: (before) =>
      sql`
      UPDATE llm_relay.inference_tasks SET idempotency_key = NULL
      WHERE idempotency_key IS NOT NULL AND created_at < ${before}
      RETURNING id`
  })
  const forgetKeys = (before: Date) => Effect.map(Effect.orDie(forgetKeyRows(before)), (rows) => rows.length)

  const findTask = SqlSchema.findOne({
    Request: Schema.String,
    Result: TaskRow,
    execute: (id) => sql`SELECT * FROM llm_relay.inference_tasks WHERE id = ${id}`
  })
  const find = (id: string) => Effect.orDie(findTask(id))

  const listTasks = SqlSchema.findAll({
    Request: ListFilter,
    Result: TaskRow,
    execute: (filter) => {
      const where: Array<Statement.Fragment> = []
      if (filter.ownerId !== undefined) where.push(sql`owner_id = ${filter.ownerId}`)
      if (filter.status !== undefined) where.push(sql`status = ${filter.status}`)
      if (filter.agentId !== undefined) where.push(sql`agent_id = ${filter.agentId}`)
      if (filter.after !== undefined) {
        where.push(sql`(created_at, id) < (${filter.after.createdAt}, ${filter.after.id})`)
      }
      return sql`
      SELECT * FROM llm_relay.inference_tasks
      ${where.length > 0 ? sql`WHERE ${sql.and(where)}` : sql``}
      ORDER BY created_at DESC, id DESC
      LIMIT ${filter.limit}`
    }
  })
  const list = (filter: ListFilter) => Effect.orDie(listTasks(filter))

  /** Pending tasks of these pools in the order a claim takes them (read only). */
  const pendingForPools = SqlSchema.findAll({
    Request: Schema.Struct({ pools: Schema.Array(Schema.String), limit: Schema.Int }),
    Result: TaskRow,
    execute: ({ limit, pools }) =>
      sql`
      SELECT * FROM llm_relay.inference_tasks
      WHERE status = 'pending' AND pool = ANY(${pools})
      ORDER BY priority DESC, created_at, seq
      LIMIT ${limit}`
  })
  const findPendingForPools = (pools: ReadonlyArray<string>, limit: number) =>
    Effect.orDie(pendingForPools({ pools, limit }))

  /**
   * One round trip per claim: the free capacity of each active, healthy row
   * of the session (its `maxConcurrent` minus the tasks it holds for it;
   * an unhealthy row's upstream is unreachable, so it takes nothing), and for
   * each row up to that many pending tasks — pinned to it, or for its pool and
   * unpinned; highest priority, then oldest — claimed for it.
   *
   * Each branch (pinned, pool) is its own ordered scan of its partial index
   * with its own LIMIT … FOR UPDATE SKIP LOCKED, merged and cut to the row's
   * free capacity: with thousands pending this reads a handful of index
   * entries instead of sorting the backlog (0.5 ms instead of 18 ms at 10k
   * pending). The update finds its rows by primary key. When pinned tasks
   * outrank pool tasks, pool tasks the cut dropped stay locked until the
   * statement ends, so another session may skip them: the caller then wakes
   * the pool again. Two rows of one session in one pool may pick the same
   * task: the UPDATE gives it to one of them, and that row shows as full, so
   * the caller looks again.
   *
   * A pool task this session handed back (`POST error` with `retry`) is
   * skipped while another member of the pool is online, so the retry goes
   * to another member when there is one, and back to this one otherwise.
   *
   * Returns every capacity row (LEFT JOIN), with the task claimed for it if
   * any: `full` when a row's claims reached its free capacity (it may have
   * left work), `roomLeft` when another row still had room. A row that
   * filled up also says whether unpinned work of its pool is still pending
   * (`more`, an index probe that stops at the first such task): the session
   * then passes its wake on to another member (src/sessions/Claimers.ts).
   * Read in the statement's snapshot, `more` may count a task a concurrent
   * claim has just taken: one needless wake, never a missed one.
   */
  const claimRows = SqlSchema.findAll({
    Request: Schema.Struct({ sessionId: Schema.String, at: At }),
    Result: CapacityRow,
    execute: ({ at, sessionId }) =>
      sql`
      WITH cap AS MATERIALIZED (
        SELECT l.name, l.pool, l.model,
               l.max_concurrent - (SELECT count(*) FROM llm_relay.inference_tasks t
                                   WHERE t.claimed_by = ${sessionId} AND t.claimed_llm = l.name
                                     AND t.status IN ('claimed', 'running'))::int AS free,
               EXISTS (SELECT 1 FROM llm_relay.llms o
                       WHERE o.pool = l.pool AND o.kind = 'virtual' AND o.status = 'active' AND o.stream_open
                         AND o.healthy AND o.provider_session_id IS DISTINCT FROM ${sessionId}) AS others_online
        FROM llm_relay.llms l
        WHERE l.provider_session_id = ${sessionId} AND l.kind = 'virtual' AND l.status = 'active' AND l.healthy
      ),
      picked AS MATERIALIZED (
        SELECT c.name AS llm, c.model AS llm_model, p.id
        FROM cap c CROSS JOIN LATERAL (
          SELECT u.id FROM (
            SELECT pinned.* FROM (
              SELECT id, priority, created_at, seq FROM llm_relay.inference_tasks
              WHERE status = 'pending' AND llm_name = c.name
              ORDER BY priority DESC, created_at, seq
              LIMIT greatest(c.free, 0)
              FOR UPDATE SKIP LOCKED
            ) pinned
            UNION ALL
            SELECT pooled.* FROM (
              SELECT id, priority, created_at, seq FROM llm_relay.inference_tasks
              WHERE status = 'pending' AND llm_name IS NULL AND pool = c.pool
                AND (NOT c.others_online OR handed_back_by IS DISTINCT FROM ${sessionId})
              ORDER BY priority DESC, created_at, seq
              LIMIT greatest(c.free, 0)
              FOR UPDATE SKIP LOCKED
            ) pooled
          ) u
          ORDER BY u.priority DESC, u.created_at, u.seq
          LIMIT greatest(c.free, 0)
        ) p
      ),
      claimed AS (
        UPDATE llm_relay.inference_tasks t
        SET status = 'claimed', claimed_by = ${sessionId},
            claimed_llm = (SELECT picked.llm FROM picked WHERE picked.id = t.id LIMIT 1),
            claimed_at = ${at}, attempts = t.attempts + 1, updated_at = ${at}, handed_back_by = NULL
        WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING t.*, (SELECT picked.llm_model FROM picked WHERE picked.id = t.id LIMIT 1) AS llm_model
      )
      SELECT c.name AS cap_name, c.pool AS cap_pool, c.free AS cap_free,
             CASE WHEN (SELECT count(*) FROM picked WHERE picked.llm = c.name) >= c.free
                  THEN EXISTS (SELECT 1 FROM llm_relay.inference_tasks w
                               WHERE w.status = 'pending' AND w.llm_name IS NULL AND w.pool = c.pool
                                 AND w.id <> ALL (ARRAY(SELECT id FROM picked)))
                  ELSE false END AS cap_more,
             claimed.*
      FROM cap c LEFT JOIN claimed ON claimed.claimed_llm = c.name`
  })
  const claimFor = (sessionId: string, at: Date) =>
    Metric.increment(claimStatements).pipe(
      Effect.zipRight(claimRows({ sessionId, at })),
      Effect.map((rows): Claimed => {
        const free = new Map<string, { pool: string; free: number; more: boolean }>()
        const taken = new Map<string, number>()
        const tasks: Array<ClaimedRow> = []
        for (const row of rows) {
          free.set(row.capName, { pool: row.capPool, free: row.capFree, more: row.capMore })
          if (row.id !== null) {
            const { capFree: _free, capMore: _more, capName: _name, capPool: _pool, ...task } = row
            tasks.push(task)
            taken.set(row.capName, (taken.get(row.capName) ?? 0) + 1)
          }
        }
        const rooms = [...free].map(([llmName, cap]): Room => ({ llmName, ...cap, taken: taken.get(llmName) ?? 0 }))
        return {
          tasks: tasks.sort((a, b) => b.priority - a.priority || +a.createdAt - +b.createdAt || a.seq - b.seq),
          full: rooms.some((room) => room.taken >= room.free),
          roomLeft: rooms.some((room) => room.taken < room.free),
          rooms
        }
      }),
      Effect.orDie
    )

  const ackTask = SqlSchema.findOne({
    Request: Schema.Struct({ h: Holder, at: At }),
    Result: Id,
    execute: ({ at, h }) =>
      sql`UPDATE llm_relay.inference_tasks SET status = 'running', updated_at = ${at} WHERE ${fence(h)} RETURNING id`
  })
  const ack = (h: Holder, at: Date) => ackTask({ h, at }).pipe(Effect.map(Option.isSome), Effect.orDie)

  /** One batch of output: counts it, then stores it as batch number `seq`, in one statement. */
  const appendBatch = SqlSchema.findOne({
    Request: Schema.Struct({ h: Holder, chunks: Schema.Array(Schema.String), at: At }),
    Result: Schema.Struct({ seq: Schema.Int }),
    execute: ({ at, chunks, h }) =>
      sql`
      WITH t AS (
        UPDATE llm_relay.inference_tasks
        SET status = 'running', output_started = true, chunk_count = chunk_count + 1,
            stream_started_at = COALESCE(stream_started_at, ${at}), updated_at = ${at}
        WHERE ${fence(h)}
        RETURNING id, chunk_count
      )
      INSERT INTO llm_relay.inference_task_chunks (task_id, seq, chunks)
      SELECT id, chunk_count, ${chunks}::text[] FROM t
      RETURNING seq`
  })
  const appendChunks = (h: Holder, chunks: ReadonlyArray<string>, at: Date) =>
    Effect.orDie(appendBatch({ h, chunks, at }))

  const completeTask = SqlSchema.findOne({
    Request: Schema.Struct({ h: Holder, status: Schema.Int, body: Schema.Unknown, at: At }),
    Result: TaskRow,
    execute: ({ at, body, h, status }) =>
      sql`
      UPDATE llm_relay.inference_tasks
      SET status = 'completed', response_status = ${status}, response_body = ${json(body)}::jsonb,
          completed_at = ${at}, updated_at = ${at}
      WHERE ${fence(h)}
      RETURNING *`
  })
  const complete = (h: Holder, status: number, body: unknown, at: Date) =>
    Effect.orDie(completeTask({ h, status, body, at }))

  const failTask = SqlSchema.findOne({
    Request: Schema.Struct({
      h: Holder,
      error: Schema.Struct({ message: Schema.String, status: Schema.Int, body: Schema.optional(Schema.Unknown) }),
      at: At
    }),
    Result: TaskRow,
    execute: ({ at, error, h }) =>
      sql`
      UPDATE llm_relay.inference_tasks
      SET status = 'error', error_type = 'UpstreamError', error_message = ${error.message},
          response_status = ${error.status}, response_body = ${json(error.body)}::jsonb,
          completed_at = ${at}, updated_at = ${at}
      WHERE ${fence(h)}
      RETURNING *`
  })
  const fail = (h: Holder, error: { message: string; status: number; body?: unknown }, at: Date) =>
    Effect.orDie(failTask({ h, error, at }))

  const handBackTask = SqlSchema.findOne({
    Request: Schema.Struct({
      h: Holder,
      error: Schema.Struct({ message: Schema.String, status: Schema.Int, body: Schema.optional(Schema.Unknown) }),
      maxAttempts: Schema.Int,
      at: At
    }),
    Result: TaskRow,
    execute: ({ at, error, h, maxAttempts }) =>
      sql`
      UPDATE llm_relay.inference_tasks
      SET status = (CASE WHEN attempts >= ${maxAttempts} THEN 'error' ELSE 'pending' END)::llm_relay.inference_task_status,
          error_type = CASE WHEN attempts >= ${maxAttempts} THEN 'UpstreamError' END,
          error_message = CASE WHEN attempts >= ${maxAttempts} THEN ${error.message} END,
          response_status = CASE WHEN attempts >= ${maxAttempts} THEN ${error.status}::int END,
          response_body = CASE WHEN attempts >= ${maxAttempts} THEN ${json(error.body)}::jsonb END,
          completed_at = CASE WHEN attempts >= ${maxAttempts} THEN ${at}::timestamptz END,
          claimed_by = CASE WHEN attempts >= ${maxAttempts} THEN claimed_by END,
          claimed_llm = CASE WHEN attempts >= ${maxAttempts} THEN claimed_llm END,
          claimed_at = CASE WHEN attempts >= ${maxAttempts} THEN claimed_at END,
          handed_back_by = CASE WHEN attempts >= ${maxAttempts} THEN NULL ELSE claimed_by END,
          updated_at = ${at}
      WHERE ${fence(h)} AND NOT output_started
      RETURNING *`
  })
  const handBack = (
    h: Holder,
    error: { message: string; status: number; body?: unknown },
    maxAttempts: number,
    at: Date
  ) => Effect.orDie(handBackTask({ h, error, maxAttempts, at }))

  const unacknowledgedRows = SqlSchema.findAll({
    Request: Schema.String,
    Result: ClaimedRow,
    execute: (sessionId) =>
      sql`
      SELECT t.*, COALESCE(l.model, t.model) AS llm_model
      FROM llm_relay.inference_tasks t LEFT JOIN llm_relay.llms l ON l.name = t.claimed_llm
      WHERE t.claimed_by = ${sessionId} AND t.status = 'claimed'
      ORDER BY t.claimed_at, t.seq`
  })
  const unacknowledged = (sessionId: string) => Effect.orDie(unacknowledgedRows(sessionId))

  const cancelTask = SqlSchema.findOne({
    Request: Schema.Struct({ id: Schema.String, reason: Schema.String, at: At }),
    Result: TaskRow,
    execute: ({ at, id, reason }) =>
      sql`
      UPDATE llm_relay.inference_tasks
      SET status = 'cancelled', error_message = ${reason}, completed_at = ${at}, updated_at = ${at}
      WHERE id = ${id} AND status IN ('pending', 'claimed', 'running')
      RETURNING *`
  })
  const cancel = (id: string, reason: string, at: Date) => Effect.orDie(cancelTask({ id, reason, at }))

  const cancelPendingTask = SqlSchema.findOne({
    Request: Schema.Struct({ id: Schema.String, reason: Schema.String, errorType: Schema.String, at: At }),
    Result: TaskRow,
    execute: ({ at, errorType, id, reason }) =>
      sql`
      UPDATE llm_relay.inference_tasks
      SET status = 'cancelled', error_type = ${errorType}, error_message = ${reason},
          completed_at = ${at}, updated_at = ${at}
      WHERE id = ${id} AND status = 'pending'
      RETURNING *`
  })
  const cancelPending = (id: string, reason: string, errorType: string, at: Date) =>
    Effect.orDie(cancelPendingTask({ id, reason, errorType, at }))

  /**
   * Held tasks matching `where` lose their holder, in one statement: without
   * output they go back to `pending` (the claim counts as a dispatch), at the
   * attempt limit they end `error`; with output they end `error`
   * `PublisherDisconnected` (the client already has part of an answer).
   */
  const revert = (where: Statement.Fragment, maxAttempts: number, at: Date) =>
    sql`
      WITH target AS MATERIALIZED (
        SELECT id, claimed_by, claimed_llm, output_started, attempts >= ${maxAttempts} AS spent
        FROM llm_relay.inference_tasks WHERE ${held} AND ${where}
        ORDER BY id
        FOR UPDATE
      )
      UPDATE llm_relay.inference_tasks t
      SET status = (CASE WHEN target.output_started OR target.spent THEN 'error' ELSE 'pending' END)::llm_relay.inference_task_status,
          error_type = CASE WHEN target.output_started THEN 'PublisherDisconnected'
                            WHEN target.spent THEN 'MaxAttempts' END,
          error_message = CASE
            WHEN target.output_started THEN 'the publisher disconnected after the answer had started'
            WHEN target.spent THEN 'dispatched ' || t.attempts || ' times and every publisher was lost' END,
          claimed_by = CASE WHEN target.output_started OR target.spent THEN t.claimed_by END,
          claimed_llm = CASE WHEN target.output_started OR target.spent THEN t.claimed_llm END,
          claimed_at = CASE WHEN target.output_started OR target.spent THEN t.claimed_at END,
          completed_at = CASE WHEN target.output_started OR target.spent THEN ${at}::timestamptz END,
          updated_at = ${at}
      FROM target WHERE t.id = target.id
      RETURNING t.id, t.status, t.pool, t.llm_name, t.claimed_by, target.claimed_by AS previous_holder,
                target.claimed_llm AS previous_llm`

  /** A statement that moves held or timed-out tasks, with the rows it moved. */
  const moving = <I, IA>(Request: Schema.Schema<I, IA>, execute: (request: IA) => Statement.Statement<object>) => {
    const run = SqlSchema.findAll({ Request, Result: Moved, execute })
    return (request: I) => Effect.orDie(run(request))
  }

  const revertHeld = moving(
    Schema.Struct({ sessionId: Schema.String, maxAttempts: Schema.Int, at: At }),
    ({ at, maxAttempts, sessionId }) => revert(sql`claimed_by = ${sessionId}`, maxAttempts, at)
  )
  const revertHeldBy = (sessionId: string, maxAttempts: number, at: Date) => revertHeld({ sessionId, maxAttempts, at })

  /** Held by a session no live broker serves: any session not of this instance. */
  const revertNotOf = moving(
    Schema.Struct({ instanceId: Schema.String, maxAttempts: Schema.Int, at: At }),
    ({ at, instanceId, maxAttempts }) =>
      revert(
        sql`claimed_by NOT IN (SELECT id FROM llm_relay.publisher_sessions WHERE instance_id = ${instanceId})`,
        maxAttempts,
        at
      )
  )
  const revertForeign = (instanceId: string, maxAttempts: number, at: Date) =>
    revertNotOf({ instanceId, maxAttempts, at })

  const revertClaimedBefore = moving(
    Schema.Struct({ claimedBefore: At, maxAttempts: Schema.Int, at: At }),
    ({ at, claimedBefore, maxAttempts }) =>
      revert(sql`status = 'claimed' AND claimed_at < ${claimedBefore}`, maxAttempts, at)
  )
  const revertUnacked = (claimedBefore: Date, maxAttempts: number, at: Date) =>
    revertClaimedBefore({ claimedBefore, maxAttempts, at })

  const expireCreatedBefore = moving(
    Schema.Struct({ createdBefore: At, message: Schema.String, at: At }),
    ({ at, createdBefore, message }) =>
      sql`
      UPDATE llm_relay.inference_tasks
      SET status = 'error', error_type = 'Expired', error_message = ${message}, completed_at = ${at}, updated_at = ${at}
      WHERE status = 'pending' AND created_at < ${createdBefore}
      RETURNING id, status, pool, llm_name, claimed_by, claimed_by AS previous_holder, claimed_llm AS previous_llm`
  )
  const expirePending = (createdBefore: Date, message: string, at: Date) =>
    expireCreatedBefore({ createdBefore, message, at })

  const timeoutClaimedBefore = moving(
    Schema.Struct({ claimedBefore: At, message: Schema.String, at: At }),
    ({ at, claimedBefore, message }) =>
      sql`
      UPDATE llm_relay.inference_tasks
      SET status = 'error', error_type = 'Timeout', error_message = ${message}, completed_at = ${at}, updated_at = ${at}
      WHERE status = 'running' AND claimed_at < ${claimedBefore}
      RETURNING id, status, pool, llm_name, claimed_by, claimed_by AS previous_holder, claimed_llm AS previous_llm`
  )
  const timeoutRunning = (claimedBefore: Date, message: string, at: Date) =>
    timeoutClaimedBefore({ claimedBefore, message, at })

  /** Deletes up to `batch` terminal tasks finished before the cutoff (their chunks cascade). */
  const deleteCompletedBefore = SqlSchema.findAll({
    Request: Schema.Struct({ completedBefore: At, batch: Schema.Int }),
    Result: Id,
    execute: ({ batch, completedBefore }) =>
      sql`
      DELETE FROM llm_relay.inference_tasks WHERE id IN (
        SELECT id FROM llm_relay.inference_tasks
        WHERE status IN ('completed', 'error', 'cancelled') AND completed_at < ${completedBefore}
        LIMIT ${batch}
      )
      RETURNING id`
  })
  const deleteFinished = (completedBefore: Date, batch: number) =>
    deleteCompletedBefore({ completedBefore, batch }).pipe(Effect.map((rows) => rows.length), Effect.orDie)

  const eraseBodiesBefore = SqlSchema.findAll({
    Request: Schema.Struct({ completedBefore: At, batch: Schema.Int, at: At }),
    Result: Id,
    execute: ({ at, batch, completedBefore }) =>
      sql`
      WITH doomed AS MATERIALIZED (
        SELECT id FROM llm_relay.inference_tasks
        WHERE bodies_erased_at IS NULL AND status IN ('completed', 'error', 'cancelled')
          AND completed_at < ${completedBefore}
        ORDER BY completed_at
        LIMIT ${batch}
        FOR UPDATE SKIP LOCKED
      ),
      chunks AS (
        DELETE FROM llm_relay.inference_task_chunks WHERE task_id IN (SELECT id FROM doomed)
      )
      UPDATE llm_relay.inference_tasks t
      SET request_body = 'null'::jsonb, response_body = NULL, bodies_erased_at = ${at}
      FROM doomed WHERE t.id = doomed.id
      RETURNING t.id`
  })
  const eraseBodies = (completedBefore: Date, batch: number, at: Date) =>
    eraseBodiesBefore({ completedBefore, batch, at }).pipe(Effect.map((rows) => rows.length), Effect.orDie)

  /** Stored output batches from `fromSeq` on, in order. */
  const batchesFrom = SqlSchema.findAll({
    Request: Schema.Struct({ taskId: Schema.String, fromSeq: Schema.Int }),
    Result: ChunkBatch,
    execute: ({ fromSeq, taskId }) =>
      sql`SELECT seq, chunks FROM llm_relay.inference_task_chunks WHERE task_id = ${taskId} AND seq >= ${fromSeq} ORDER BY seq`
  })
  const chunksFrom = (taskId: string, fromSeq: number) => Effect.orDie(batchesFrom({ taskId, fromSeq }))

  return {
    insert,
    hasPendingRoom,
    eraseBodies,
    findByKey,
    forgetKeys,
    find,
    list,
    findPendingForPools,
    claimFor,
    ack,
    appendChunks,
    complete,
    fail,
    handBack,
    unacknowledged,
    cancel,
    cancelPending,
    revertHeldBy,
    revertForeign,
    revertUnacked,
    expirePending,
    timeoutRunning,
    deleteFinished,
    chunksFrom
  } as const
})

export class TaskRepo extends Context.Tag("llm-relay/TaskRepo")<TaskRepo, TaskRepoShape>() {
  static readonly layer = Layer.effect(this, make)
}
