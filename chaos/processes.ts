/** `bin/llm-relay` as real processes: spawn, wait for a line, SIGKILL, stop. */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"

/** The repository root (this file runs from chaos/ under vitest and from dist/chaos/ under node). */
export const ROOT = (() => {
  let dir = import.meta.dirname
  while (!Fs.existsSync(Path.join(dir, "bin", "llm-relay"))) {
    const parent = Path.dirname(dir)
    if (parent === dir) throw new Error(`no bin/llm-relay above ${import.meta.dirname}`)
    dir = parent
  }
  return dir
})()

export const BIN = Path.join(ROOT, "bin", "llm-relay")

export interface RelayProcess {
  readonly child: ChildProcess
  /** Everything it printed (the last 200 kB). */
  readonly output: () => string
  /** Lines that matched `watch` (kept in full, however long the run). */
  readonly watched: Array<string>
  /** Resolves when a line matching `pattern` is printed after this call (or already was, with `past`). */
  readonly waitFor: (pattern: RegExp, timeoutMs: number, past?: boolean) => Promise<string>
  readonly exited: Promise<number | null>
  readonly kill: () => Promise<void>
  readonly stop: () => Promise<void>
}

export const spawnRelay = (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  watch?: RegExp
): RelayProcess => {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  let partial = ""
  const lines: Array<string> = []
  const listeners = new Set<(line: string) => void>()
  const watched: Array<string> = []
  const onData = (d: Buffer) => {
    const text = d.toString()
    output = (output + text).slice(-200_000)
    partial += text
    let index: number
    while ((index = partial.indexOf("\n")) >= 0) {
      const line = partial.slice(0, index)
      partial = partial.slice(index + 1)
      lines.push(line)
      if (lines.length > 2000) lines.shift()
      if (watch?.test(line) === true) watched.push(line)
      for (const listener of listeners) listener(line)
    }
  }
  child.stdout!.on("data", onData)
  child.stderr!.on("data", onData)
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
  const done = () => child.exitCode !== null || child.signalCode !== null
  return {
    child,
    output: () => output,
    watched,
    waitFor: (pattern, timeoutMs, past = false) =>
      new Promise((resolve, reject) => {
        const already = past ? lines.find((l) => pattern.test(l)) : undefined
        if (already !== undefined) return resolve(already)
        const timer = setTimeout(() => {
          finish()
          reject(
            new Error(`no line matching ${pattern} within ${timeoutMs} ms from ${args[0]}:\n${output.slice(-4000)}`)
          )
        }, timeoutMs)
        const listener = (line: string) => {
          if (!pattern.test(line)) return
          finish()
          resolve(line)
        }
        const onExit = () => {
          finish()
          reject(new Error(`${args[0]} exited before printing ${pattern}:\n${output.slice(-4000)}`))
        }
        const finish = () => {
          clearTimeout(timer)
          listeners.delete(listener)
          child.off("exit", onExit)
        }
        listeners.add(listener)
        child.once("exit", onExit)
      }),
    exited,
    kill: async () => {
      if (!done()) child.kill("SIGKILL")
      await exited
    },
    stop: async () => {
      if (done()) return
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000)
      child.kill("SIGTERM")
      await exited
      clearTimeout(timer)
    }
  }
}
