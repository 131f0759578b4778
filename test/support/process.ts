/** Spawning `bin/llm-relay` as a user would, and reading what it prints. */
import { type ChildProcess, spawn } from "node:child_process"
import * as Path from "node:path"

export const BIN = Path.resolve(import.meta.dirname, "../../bin/llm-relay")

export interface Spawned {
  readonly child: ChildProcess
  output: string
  /** Resolves with the first match of `pattern` in stdout+stderr. */
  readonly waitFor: (pattern: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>
  readonly exited: Promise<number | null>
}

export const spawnRelay = (args: ReadonlyArray<string>, env: Record<string, string | undefined> = {}): Spawned => {
  const merged: Record<string, string> = {}
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) merged[k] = v
  const child = spawn(process.execPath, [BIN, ...args], { env: merged, stdio: ["ignore", "pipe", "pipe"] })
  const spawned: Spawned = {
    child,
    output: "",
    waitFor: (pattern, timeoutMs = 60_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const match = spawned.output.match(pattern)
          if (match) {
            cleanup()
            resolve(match)
          }
        }
        const timer = setTimeout(() => {
          cleanup()
          reject(new Error(`no ${pattern} within ${timeoutMs} ms; output:\n${spawned.output}`))
        }, timeoutMs)
        const onExit = () => {
          check()
          cleanup()
          reject(new Error(`process exited before ${pattern}; output:\n${spawned.output}`))
        }
        const cleanup = () => {
          clearTimeout(timer)
          child.stdout?.off("data", check)
          child.stderr?.off("data", check)
          child.off("exit", onExit)
        }
        child.stdout?.on("data", check)
        child.stderr?.on("data", check)
        child.on("exit", onExit)
        check()
      }),
    exited: new Promise((resolve) => child.on("exit", (code) => resolve(code)))
  }
  child.stdout?.on("data", (d: Buffer) => (spawned.output += d.toString()))
  child.stderr?.on("data", (d: Buffer) => (spawned.output += d.toString()))
  return spawned
}
