/**
 * A short `npm run chaos` inside `npm test`: the same scenario (chaos/run.ts)
 * for 20 s with a fixed seed, asserting the invariants only — the success
 * rate belongs to full runs (`npm run chaos`), not to a 20-second sample on a
 * shared machine. Needs the build (`npm test` builds first): it runs
 * `bin/llm-relay` as processes.
 */
import { assert, inject, it } from "vitest"
import { formatReport, runChaos } from "../../chaos/run.js"

const SEED = 20240613

it(`chaos: 20 s of faults under load keep every invariant (seed ${SEED})`, async () => {
  const lines: Array<string> = [`chaos: seed ${SEED} (replay: npm run chaos -- --seconds 20 --seed ${SEED})`]
  console.log(lines[0])
  const report = await runChaos({
    seed: SEED,
    seconds: 20,
    serverUrl: inject("databaseUrl"),
    threshold: undefined,
    callDeadlineMs: 40_000,
    log: (line) => lines.push(line)
  })
  const text = [...lines, ...formatReport(report)].join("\n")
  console.log(text)
  assert.isAbove(report.calls.length, 50, text)
  assert.isAbove(report.faults.length, 3, text)
  const violated = report.invariants.filter((i) => !i.ok)
  assert.deepStrictEqual(violated.map((i) => i.name), [], text)
}, 150_000)
