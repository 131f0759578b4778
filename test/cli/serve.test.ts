/**
 * `bin/llm-relay serve` and `migrate` as processes, the way a user runs them.
 */
import { Effect, Exit, Scope } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { freePort } from "../../src/db/Embedded.js"
import { spawnRelay } from "../support/process.js"
import { createDatabase } from "../support/TestDatabase.js"

const scope = Effect.runSync(Scope.make())
let databaseUrl: string
beforeAll(async () => {
  databaseUrl = (await Effect.runPromise(Scope.extend(createDatabase, scope))).url
})
afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

const ADMIN = "x".repeat(40)

describe("llm-relay serve", () => {
  it("on DATABASE_URL: migrates, serves /healthz and /readyz, logs where it listens, stops on SIGTERM", async () => {
    const port = await Effect.runPromise(freePort)
    const serve = spawnRelay(["serve", "--port", String(port)], { DATABASE_URL: databaseUrl, RELAY_ADMIN_TOKEN: ADMIN })
    try {
      await serve.waitFor(/Listening on/)
      assert.match(serve.output, /database: postgres/)
      assert.notInclude(serve.output, ADMIN)
      const health = await fetch(`http://127.0.0.1:${port}/healthz`)
      assert.deepStrictEqual(await health.json(), { status: "ok" })
      assert.strictEqual((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 200)
      const models = await fetch(`http://127.0.0.1:${port}/v1/models`, {
        headers: { authorization: `Bearer ${ADMIN}` }
      })
      assert.strictEqual(models.status, 200)
    } finally {
      serve.child.kill("SIGTERM")
    }
    assert.strictEqual(await serve.exited, 0)
  })

  it("a RELAY_ADMIN_TOKEN under 32 characters stops the start, naming it, before the database is touched", async () => {
    const fresh = await Effect.runPromise(Scope.extend(createDatabase, scope))
    const serve = spawnRelay(["serve", "--port", String(await Effect.runPromise(freePort))], {
      DATABASE_URL: fresh.url,
      RELAY_ADMIN_TOKEN: "too-short"
    })
    assert.notStrictEqual(await serve.exited, 0)
    assert.match(serve.output, /RELAY_ADMIN_TOKEN must be at least 32 characters/)
    assert.notMatch(serve.output, /migrations applied/)
  })

  it("usage mistakes (bad value, unknown subcommand or flag) exit 2 with a readable message, no error dump", async () => {
    const cases: ReadonlyArray<[ReadonlyArray<string>, RegExp]> = [
      [["serve", "--port", "abc"], /'abc' is not a integer/],
      [["bogus"], /Invalid subcommand/],
      [["migrate", "--bogus-flag"], /unknown argument: '--bogus-flag'/]
    ]
    for (const [args, message] of cases) {
      const run = spawnRelay([...args], { DATABASE_URL: databaseUrl })
      assert.strictEqual(await run.exited, 2, args.join(" "))
      assert.match(run.output, message)
      assert.notInclude(run.output, `"_tag"`)
    }
  })

  it("migrate applies migrations and exits 0; a second run says it is up to date", async () => {
    const first = spawnRelay(["migrate"], { DATABASE_URL: databaseUrl })
    assert.strictEqual(await first.exited, 0)
    const second = spawnRelay(["migrate"], { DATABASE_URL: databaseUrl })
    assert.strictEqual(await second.exited, 0)
    assert.match(second.output, /up to date/)
  })

  it(
    "without DATABASE_URL: embedded PostgreSQL in RELAY_DATA_DIR, a generated admin token, one broker per data dir",
    async () => {
      const dataDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "llm-relay-serve-"))
      const [port, port2] = [await Effect.runPromise(freePort), await Effect.runPromise(freePort)]
      const env = { DATABASE_URL: "", RELAY_DATA_DIR: dataDir, RELAY_ADMIN_TOKEN: undefined }
      const serve = spawnRelay(["serve", "--port", String(port)], env)
      try {
        await serve.waitFor(/Listening on/, 90_000)
        assert.match(serve.output, /embedded PostgreSQL/)
        const [, token] = serve.output.match(/admin token[^\n]*\n\s*\n\s*(\S+)/) ?? []
        assert.isString(token)
        const health = await fetch(`http://127.0.0.1:${port}/healthz`)
        assert.strictEqual(health.status, 200)
        const models = await fetch(`http://127.0.0.1:${port}/v1/models`, {
          headers: { authorization: `Bearer ${token}` }
        })
        assert.strictEqual(models.status, 200)
        const second = spawnRelay(["serve", "--port", String(port2)], env)
        assert.notStrictEqual(await second.exited, 0)
        assert.match(second.output, /in use by another llm-relay process/)
      } finally {
        serve.child.kill("SIGTERM")
      }
      assert.strictEqual(await serve.exited, 0)
      // the data stays: a restart finds the same database and prints no new token
      const again = spawnRelay(["serve", "--port", String(port)], env)
      try {
        await again.waitFor(/Listening on/, 90_000)
        assert.notMatch(again.output, /Generated an admin token/)
      } finally {
        again.child.kill("SIGTERM")
      }
      assert.strictEqual(await again.exited, 0)
      Fs.rmSync(dataDir, { recursive: true, force: true })
    },
    240_000
  )

  it(
    "two signals 20 ms apart stop the broker and its embedded PostgreSQL; a server a killed broker left behind is named with its pid",
    async () => {
      const dataDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "llm-relay-signals-"))
      const port = await Effect.runPromise(freePort)
      const env = { DATABASE_URL: "", RELAY_DATA_DIR: dataDir, RELAY_ADMIN_TOKEN: ADMIN }
      const serverPid = () =>
        Number.parseInt(Fs.readFileSync(Path.join(dataDir, "pg", "postmaster.pid"), "utf8").split("\n")[0]!, 10)
      let leftover: number | undefined
      try {
        const first = spawnRelay(["serve", "--port", String(port)], env)
        await first.waitFor(/Listening on/, 90_000)
        const pid = serverPid()
        first.child.kill("SIGINT")
        await new Promise((r) => setTimeout(r, 20))
        first.child.kill("SIGINT")
        assert.strictEqual(await first.exited, 0, first.output)
        assert.isFalse(isAlive(pid), "the embedded PostgreSQL outlived its broker")

        const killed = spawnRelay(["serve", "--port", String(port)], env)
        await killed.waitFor(/Listening on/, 90_000)
        leftover = serverPid()
        killed.child.kill("SIGKILL")
        await killed.exited
        assert.isTrue(isAlive(leftover)) // nothing can stop it when its broker is killed outright

        const next = spawnRelay(["serve", "--port", String(port)], env)
        assert.strictEqual(await next.exited, 1)
        assert.include(next.output, `still running on ${Path.join(dataDir, "pg")} (pid ${leftover})`)
        assert.notMatch(next.output, /\n\s+at /, "a stack trace instead of one line")
      } finally {
        if (leftover !== undefined && isAlive(leftover)) process.kill(leftover, "SIGINT")
        while (leftover !== undefined && isAlive(leftover)) await new Promise((r) => setTimeout(r, 50))
        Fs.rmSync(dataDir, { recursive: true, force: true })
      }
    },
    240_000
  )

  it(
    "a data dir inside a private directory (mode 700) works; as root the cluster moves where the postgres user can reach it",
    async () => {
      const parent = Fs.mkdtempSync(Path.join(Os.tmpdir(), "llm-relay-private-"))
      Fs.chmodSync(parent, 0o700)
      const dataDir = Path.join(parent, "data")
      const port = await Effect.runPromise(freePort)
      const serve = spawnRelay(["serve", "--port", String(port)], {
        DATABASE_URL: "",
        RELAY_DATA_DIR: dataDir,
        RELAY_ADMIN_TOKEN: ADMIN
      })
      let moved: string | undefined
      try {
        await serve.waitFor(/Listening on/, 90_000)
        assert.strictEqual((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 200)
        if (Os.userInfo().uid === 0) {
          moved = serve.output.match(/the embedded cluster lives in (\S+)/)?.[1]
          assert.isString(moved, serve.output)
          assert.isTrue(Fs.existsSync(Path.join(moved!, "PG_VERSION")))
        } else {
          assert.isTrue(Fs.existsSync(Path.join(dataDir, "pg", "PG_VERSION")))
        }
      } finally {
        serve.child.kill("SIGTERM")
      }
      assert.strictEqual(await serve.exited, 0)
      if (moved !== undefined) Fs.rmSync(moved, { recursive: true, force: true })
      Fs.rmSync(parent, { recursive: true, force: true })
    },
    240_000
  )
})

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
