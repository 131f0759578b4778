/**
 * `npm run chaos -- [--seconds 60] [--seed N]`: the fault-injection run (run.ts).
 * The seed is printed first; the same seed replays the same fault schedule
 * and the same calls. Exit code 1 when an invariant is violated.
 */
import { randomSeed } from "./prng.js"
import { formatReport, runChaos } from "./run.js"

const usage = "usage: npm run chaos -- [--seconds N] [--seed N]"

const parse = (argv: ReadonlyArray<string>) => {
  let seconds = 60
  let seed: number | undefined
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!
    const value = argv[i + 1]
    if ((flag === "--seconds" || flag === "--seed") && value !== undefined && /^\d+$/.test(value)) {
      if (flag === "--seconds") seconds = Number(value)
      else seed = Number(value) >>> 0
      i++
    } else if (flag === "--help" || flag === "-h") {
      console.log(usage)
      process.exit(0)
    } else {
      console.error(`chaos: unknown or bad argument '${flag}'\n${usage}`)
      process.exit(2)
    }
  }
  if (seconds < 5) {
    console.error("chaos: --seconds must be at least 5")
    process.exit(2)
  }
  return { seconds, seed: seed ?? randomSeed() }
}

const { seconds, seed } = parse(process.argv.slice(2))
console.log(`chaos: seed ${seed} (replay: npm run chaos -- --seconds ${seconds} --seed ${seed})`)
try {
  const report = await runChaos({ seed, seconds, serverUrl: process.env.DATABASE_URL, threshold: 0.95 })
  for (const line of formatReport(report)) console.log(line)
  process.exit(report.ok ? 0 : 1)
} catch (error) {
  console.error(`chaos: the run could not complete (seed ${seed}):`, error)
  process.exit(1)
}
