/**
 * One PostgreSQL server for the whole run: `DATABASE_URL` when set, else an
 * embedded server in a temporary directory, removed afterwards. Each test file
 * then creates its own database on it (see TestDatabase.ts).
 */
import { Effect, Exit, Redacted, Scope } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type { TestProject } from "vitest/node"
import * as Embedded from "../../src/db/Embedded.js"

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string
  }
}

export default async function setup(project: TestProject) {
  const fromEnv = process.env.DATABASE_URL
  if (fromEnv !== undefined && fromEnv.trim() !== "") {
    project.provide("databaseUrl", fromEnv)
    return
  }
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "llm-relay-test-pg-"))
  const scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(
    Embedded.start({ dataDir: dir, ephemeral: true }).pipe(Scope.extend(scope))
  ).catch(async (error: unknown) => {
    // vitest shows nothing of a failed global setup but its exit code: say why here
    console.error(
      `\nllm-relay tests: the embedded PostgreSQL did not start: ${
        error instanceof Error ? error.message : String(error)
      }\n` +
        "(set DATABASE_URL to run the tests on a PostgreSQL server of your own)\n"
    )
    await Effect.runPromise(Scope.close(scope, Exit.void))
    Fs.rmSync(dir, { recursive: true, force: true })
    throw error
  })
  project.provide("databaseUrl", Redacted.value(server.url))
  return async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}
