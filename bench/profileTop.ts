/**
 * `node dist/bench/profileTop.js <file.cpuprofile> [top=25]`: where a
 * `node --cpu-prof` profile (e.g. from `npm run bench -- --cpu-prof`) spent
 * its time — self time by function, and by package / project file.
 */
import * as Fs from "node:fs"

interface Node {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}
interface Profile {
  readonly nodes: ReadonlyArray<Node>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
  readonly startTime: number
  readonly endTime: number
}

const [file, topArg] = process.argv.slice(2)
if (file === undefined) {
  process.stderr.write("usage: profileTop.js <file.cpuprofile> [top]\n")
  process.exit(2)
}
const top = Number(topArg ?? 25)
const profile = JSON.parse(Fs.readFileSync(file, "utf8")) as Profile
const byId = new Map(profile.nodes.map((n) => [n.id, n] as const))
const self = new Map<number, number>()
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]!
  self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
}
const total = [...self.values()].reduce((a, b) => a + b, 0)

/** A package name for node_modules files, the project path for ours, else the url. */
const owner = (url: string) => {
  if (url === "") return "(native / vm)"
  const nm = url.lastIndexOf("node_modules/")
  if (nm >= 0) {
    const rest = url.slice(nm + 13).split("/")
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!
  }
  if (url.startsWith("node:")) return url
  const dist = url.indexOf("/dist/")
  return dist >= 0 ? url.slice(dist + 1) : url
}

const byFunction = new Map<string, number>()
const byOwner = new Map<string, number>()
for (const [id, us] of self) {
  const frame = byId.get(id)!.callFrame
  const key = `${frame.functionName || "(anonymous)"}  ${owner(frame.url)}:${frame.lineNumber + 1}`
  byFunction.set(key, (byFunction.get(key) ?? 0) + us)
  byOwner.set(owner(frame.url), (byOwner.get(owner(frame.url)) ?? 0) + us)
}
const show = (title: string, m: Map<string, number>) => {
  console.log(`\n${title}`)
  for (const [k, us] of [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((us / total) * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}`)
  }
}
console.log(
  `${file}: ${(total / 1e6).toFixed(1)} s sampled over ${((profile.endTime - profile.startTime) / 1e6).toFixed(1)} s`
)
show("self time by package / file", byOwner)
show("self time by function", byFunction)
