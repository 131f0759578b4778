/**
 * Every lifecycle constant of the broker, in one place (ARCHITECTURE.md "Time").
 * Read from the environment with `Config`; tests keep the defaults and move
 * `TestClock` instead of shortening anything.
 */
import { Config, Context, Duration, Effect, Layer } from "effect"

export interface RelayConfigShape {
  readonly heartbeatInterval: Duration.Duration
  readonly heartbeatTimeout: Duration.Duration
  readonly claimAckTimeout: Duration.Duration
  readonly pendingTimeout: Duration.Duration
  readonly runningTimeout: Duration.Duration
  readonly inactiveRetention: Duration.Duration
  readonly terminalRetention: Duration.Duration
  /** A finished task's request, response and output are erased this long after it ended (the row stays). */
  readonly bodyRetention: Duration.Duration
  readonly sweepInterval: Duration.Duration
  readonly keepaliveInterval: Duration.Duration
  readonly syncTimeout: Duration.Duration
  /**
   * How long a pool counts as reconnecting after its last online member went
   * away without a goodbye: calls queue and wait for a member to come back.
   */
  readonly reconnectGrace: Duration.Duration
  /** A streaming call still queued after this long gets its 200 headers and `: queued` comments. */
  readonly queuedHeadersAfter: Duration.Duration
  /** How often a waiter re-checks its task when no signal came (signals wake it; this is the safety net). */
  readonly pollInterval: Duration.Duration
  /**
   * How often an idle session actor looks for work when no signal came. Every
   * change that frees work signals its pool, so this is a safety net; it is
   * long because an idle broker may hold thousands of sessions.
   */
  readonly sessionPollInterval: Duration.Duration
  /** How long a client's Idempotency-Key names its task (a retry within it attaches). */
  readonly idempotencyWindow: Duration.Duration
  readonly maxAttempts: number
  readonly maxBodyBytes: number
  /** Output a reader may leave unread before its stream is cut (a sync call's task is then cancelled). */
  readonly maxBufferedOutput: number
  /** Rows deleted per statement by the retention sweep. */
  readonly retentionBatchSize: number
  /** Per principal (PROTOCOL.md "Limits per principal"): open publisher task streams. */
  readonly limitTaskStreams: number
  /** Per principal, on each broker instance: open `/events` streams, `/wait`s and calls waiting for an answer. */
  readonly limitWaiting: number
  /** Per principal: LLM rows its publishers registered. */
  readonly limitLlms: number
  /** Per principal: tasks pending in the queue. */
  readonly limitPending: number
}

export const defaults: RelayConfigShape = {
  heartbeatInterval: Duration.seconds(30),
  heartbeatTimeout: Duration.seconds(90),
  claimAckTimeout: Duration.seconds(30),
  pendingTimeout: Duration.hours(1),
  runningTimeout: Duration.minutes(30),
  inactiveRetention: Duration.hours(4),
  terminalRetention: Duration.days(7),
  bodyRetention: Duration.hours(24),
  sweepInterval: Duration.seconds(15),
  keepaliveInterval: Duration.seconds(15),
  syncTimeout: Duration.seconds(600),
  reconnectGrace: Duration.seconds(15),
  queuedHeadersAfter: Duration.seconds(3),
  pollInterval: Duration.seconds(30),
  sessionPollInterval: Duration.seconds(60),
  idempotencyWindow: Duration.hours(24),
  maxAttempts: 3,
  maxBodyBytes: 8 * 1024 * 1024,
  maxBufferedOutput: 8 * 1024 * 1024,
  retentionBatchSize: 1000,
  limitTaskStreams: 64,
  limitWaiting: 1024,
  limitLlms: 256,
  limitPending: 10_000
}

const duration = (name: string, fallback: Duration.Duration) => Config.duration(name).pipe(Config.withDefault(fallback))
const integer = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: `${name} must be a positive integer`, validation: (n) => n > 0 }),
    Config.withDefault(fallback)
  )

/** Env names: RELAY_HEARTBEAT_TIMEOUT="90 seconds", RELAY_MAX_ATTEMPTS=3, … */
export const fromEnv: Config.Config<RelayConfigShape> = Config.all({
  heartbeatInterval: duration("RELAY_HEARTBEAT_INTERVAL", defaults.heartbeatInterval),
  heartbeatTimeout: duration("RELAY_HEARTBEAT_TIMEOUT", defaults.heartbeatTimeout),
  claimAckTimeout: duration("RELAY_CLAIM_ACK_TIMEOUT", defaults.claimAckTimeout),
  pendingTimeout: duration("RELAY_PENDING_TIMEOUT", defaults.pendingTimeout),
  runningTimeout: duration("RELAY_RUNNING_TIMEOUT", defaults.runningTimeout),
  inactiveRetention: duration("RELAY_INACTIVE_RETENTION", defaults.inactiveRetention),
  terminalRetention: duration("RELAY_TERMINAL_RETENTION", defaults.terminalRetention),
  bodyRetention: duration("RELAY_BODY_RETENTION", defaults.bodyRetention),
  sweepInterval: duration("RELAY_SWEEP_INTERVAL", defaults.sweepInterval),
  keepaliveInterval: duration("RELAY_KEEPALIVE_INTERVAL", defaults.keepaliveInterval),
  syncTimeout: duration("RELAY_SYNC_TIMEOUT", defaults.syncTimeout),
  reconnectGrace: duration("RELAY_RECONNECT_GRACE", defaults.reconnectGrace),
  queuedHeadersAfter: duration("RELAY_QUEUED_HEADERS_AFTER", defaults.queuedHeadersAfter),
  pollInterval: duration("RELAY_POLL_INTERVAL", defaults.pollInterval),
  sessionPollInterval: duration("RELAY_SESSION_POLL_INTERVAL", defaults.sessionPollInterval),
  idempotencyWindow: duration("RELAY_IDEMPOTENCY_WINDOW", defaults.idempotencyWindow),
  maxAttempts: integer("RELAY_MAX_ATTEMPTS", defaults.maxAttempts),
  maxBodyBytes: integer("RELAY_MAX_BODY_BYTES", defaults.maxBodyBytes),
  maxBufferedOutput: integer("RELAY_MAX_BUFFERED_OUTPUT", defaults.maxBufferedOutput),
  retentionBatchSize: integer("RELAY_RETENTION_BATCH_SIZE", defaults.retentionBatchSize),
  limitTaskStreams: integer("RELAY_LIMIT_TASK_STREAMS", defaults.limitTaskStreams),
  limitWaiting: integer("RELAY_LIMIT_WAITING", defaults.limitWaiting),
  limitLlms: integer("RELAY_LIMIT_LLMS", defaults.limitLlms),
  limitPending: integer("RELAY_LIMIT_PENDING", defaults.limitPending)
})

export class RelayConfig extends Context.Tag("llm-relay/RelayConfig")<RelayConfig, RelayConfigShape>() {
  /** Defaults overridden by the environment. */
  static readonly layer = Layer.effect(this, fromEnv)
  /** The documented defaults, untouched by the environment (tests). */
  static readonly layerDefaults = Layer.succeed(this, defaults)
  static readonly layerWith = (overrides: Partial<RelayConfigShape>) =>
    Layer.succeed(this, { ...defaults, ...overrides })
}

/** `now - duration` as a Date, for cutoffs passed to SQL. */
export const cutoff = (nowMillis: number, duration: Duration.Duration): Date =>
  new Date(nowMillis - Duration.toMillis(duration))

/** The current time from `Clock`, as a Date for SQL parameters. */
export const now: Effect.Effect<Date> = Effect.clockWith((clock) =>
  Effect.map(clock.currentTimeMillis, (ms) => new Date(ms))
)

/**
 * This broker process. Publisher sessions record the instance that serves
 * their stream, so a restarted broker can tell which held tasks lost their
 * holder.
 */
export class InstanceId extends Context.Tag("llm-relay/InstanceId")<InstanceId, string>() {
  static readonly layer = Layer.sync(this, () => `instance-${globalThis.crypto.randomUUID()}`)
}
