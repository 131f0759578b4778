/**
 * Session scale: many idle publisher sessions on one broker. Each registers
 * one provider of its own name and opens its task stream; for the second idle
 * window it also heartbeats at the interval the broker asked for (first beat
 * at a random phase, so beats are spread as they would be in a fleet).
 * Measured: broker RSS and CPU per session (stream keepalives alone, then
 * with heartbeats), and how long a task for one session's model takes to
 * reach its stream (the session then completes it).
 */
import * as Http from "node:http"
import { cpuSeconds, request, rssBytes, sleep, summarize, type Summary } from "./harness.js"

/** One socket per task stream (plus the shared keep-alive agent for posts): what a fleet of publishers does. */
const streamAgent = new Http.Agent({ keepAlive: false, maxSockets: Infinity })

export interface IdleSession {
  readonly name: string
  readonly sessionId: string
  readonly heartbeatIntervalMs: number
  /** Heartbeat at the broker's interval, the first beat at a random phase within it. */
  readonly startHeartbeats: () => void
  readonly stopHeartbeats: () => void
  /** Resolves with performance.now() when the next task frame arrives (the task is then completed). */
  readonly nextTask: () => Promise<number>
  /** Task frames received so far (each one is completed). */
  readonly received: () => number
  readonly close: () => void
}

/** A session of one provider `name` (maxConcurrent 1), in `pool` when given (its own name otherwise). */
export const openIdleSession = (brokerUrl: string, token: string, name: string, pool?: string): Promise<IdleSession> =>
  request(`${brokerUrl}/v1/publishers/sessions`, {
    headers: { authorization: `Bearer ${token}` },
    body: { providers: [{ name, model: "m", maxConcurrent: 1, ...(pool !== undefined ? { pool } : {}) }] },
    timeoutMs: 60_000
  }).then((registered) => {
    if (registered.status !== 200) throw new Error(`register: ${registered.status} ${registered.text}`)
    const { sessionId, heartbeatIntervalMs } = JSON.parse(registered.text) as {
      sessionId: string
      heartbeatIntervalMs: number
    }
    const auth = { authorization: `Bearer ${token}` }
    return new Promise<IdleSession>((resolve, reject) => {
      let onTask: ((at: number) => void) | undefined
      let beat: NodeJS.Timeout | undefined
      let received = 0
      const req = Http.get(`${brokerUrl}/v1/publishers/sessions/${sessionId}/tasks`, {
        agent: streamAgent,
        headers: auth
      }, (res) => {
        if (res.statusCode !== 200) return reject(new Error(`task stream: ${res.statusCode}`))
        res.setEncoding("utf8")
        let ready = false
        let buffer = ""
        res.on("data", (d: string) => {
          buffer += d
          let end: number
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, end)
            buffer = buffer.slice(end + 2)
            if (!ready && event.startsWith("event: ready")) {
              ready = true
              const heartbeat = () =>
                void request(`${brokerUrl}/v1/publishers/sessions/${sessionId}/heartbeat`, {
                  method: "POST",
                  headers: auth,
                  timeoutMs: 30_000
                })
                  .catch(() => {})
              const stopHeartbeats = () => {
                clearTimeout(beat)
                clearInterval(beat)
                beat = undefined
              }
              resolve({
                name,
                sessionId,
                heartbeatIntervalMs,
                startHeartbeats: () => {
                  stopHeartbeats()
                  beat = setTimeout(() => {
                    heartbeat()
                    beat = setInterval(heartbeat, heartbeatIntervalMs)
                  }, Math.random() * heartbeatIntervalMs)
                },
                stopHeartbeats,
                nextTask: () => new Promise((r) => (onTask = r)),
                received: () => received,
                close: () => {
                  stopHeartbeats()
                  req.destroy()
                }
              })
            } else if (event.startsWith("event: task")) {
              const at = performance.now()
              received++
              onTask?.(at)
              onTask = undefined
              const frame = JSON.parse(event.slice(event.indexOf("data: ") + 6)) as { taskId: string; attempt: number }
              void request(`${brokerUrl}/v1/publishers/sessions/${sessionId}/tasks/${frame.taskId}/result`, {
                headers: auth,
                body: { status: 200, body: {}, attempt: frame.attempt }
              }).catch(() => {})
            }
          }
        })
        res.on("error", () => {})
      })
      req.on("error", (e) => reject(e))
    })
  })

export interface ScaleStep {
  readonly sessions: number
  readonly openSeconds: number
  /** broker CPU to register and open one session (ms) */
  readonly openCpuMsPerSession: number
  readonly rssMiB: number
  readonly rssPerSessionKiB: number
  readonly idleWindowSeconds: number
  /** streams open, keepalives only */
  readonly quietCpuPercentOfOneCore: number
  readonly quietCpuMicrosecondsPerSessionPerSecond: number
  /** streams open and every session heartbeating */
  readonly idleCpuPercentOfOneCore: number
  readonly idleCpuMicrosecondsPerSessionPerSecond: number
  readonly heartbeatsPerSecond: number
  /** broker CPU per heartbeat, from the difference of the two windows (ms) */
  readonly cpuMsPerHeartbeat: number
  readonly taskReachMs: Summary
}

/** Time from `POST /v1/tasks` for one session's model to its task frame, `count` times over spread sessions. */
export const reach = async (
  brokerUrl: string,
  clientToken: string,
  open: ReadonlyArray<IdleSession>,
  count: number
) => {
  const times: Array<number> = []
  for (let i = 0; i < count; i++) {
    const session = open[Math.floor((i * open.length) / count)]!
    const arrived = session.nextTask()
    const t0 = performance.now()
    const answer = await request(`${brokerUrl}/v1/tasks`, {
      headers: { authorization: `Bearer ${clientToken}` },
      body: { model: session.name, path: "/v1/chat/completions", body: { model: session.name, messages: [] } }
    })
    if (answer.status !== 202) throw new Error(`POST /v1/tasks: ${answer.status} ${answer.text}`)
    const at = await Promise.race([arrived, sleep(30_000).then(() => Number.NaN)])
    times.push(at - t0)
  }
  return summarize(times.filter(Number.isFinite))
}

/**
 * Opens sessions up to each count in `counts` (cumulatively) and measures at
 * each step. `baselineRss` is the broker's RSS with no sessions.
 */
export const scale = async (options: {
  readonly brokerUrl: string
  readonly brokerPid: number
  readonly publisherToken: string
  readonly clientToken: string
  readonly counts: ReadonlyArray<number>
  readonly idleWindowSeconds: number
  readonly reachCount: number
  readonly baselineRss: number
  readonly open: Array<IdleSession>
  readonly onProgress: (message: string) => void
}): Promise<Array<ScaleStep>> => {
  const steps: Array<ScaleStep> = []
  const { open, brokerPid } = options
  for (const target of options.counts) {
    options.onProgress(`session scale: opening sessions up to ${target}`)
    const openedAt = performance.now()
    const cpuBefore = cpuSeconds(brokerPid)
    const opening = open.length
    while (open.length < target) {
      const batch = Math.min(64, target - open.length)
      const sessions = await Promise.all(
        Array.from(
          { length: batch },
          (_, i) => openIdleSession(options.brokerUrl, options.publisherToken, `idle-${open.length + i}`)
        )
      )
      open.push(...sessions)
    }
    const openSeconds = (performance.now() - openedAt) / 1000
    const openCpu = cpuSeconds(brokerPid) - cpuBefore
    await sleep(2000)
    const rss = rssBytes(brokerPid)
    options.onProgress(
      `session scale: ${target} sessions idle for ${options.idleWindowSeconds} s, then as long heartbeating`
    )
    const window = async () => {
      const cpu0 = cpuSeconds(brokerPid)
      await sleep(options.idleWindowSeconds * 1000)
      return cpuSeconds(brokerPid) - cpu0
    }
    const quiet = await window()
    for (const s of open) s.startHeartbeats()
    const cpu = await window()
    for (const s of open) s.stopHeartbeats()
    const heartbeatsPerSecond = open.reduce((sum, s) => sum + 1000 / s.heartbeatIntervalMs, 0)
    options.onProgress(`session scale: time for a task to reach one of ${target} sessions`)
    const reached = await reach(options.brokerUrl, options.clientToken, open, options.reachCount)
    steps.push({
      sessions: target,
      openSeconds,
      openCpuMsPerSession: (openCpu * 1000) / Math.max(1, target - opening),
      rssMiB: rss / 2 ** 20,
      rssPerSessionKiB: (rss - options.baselineRss) / target / 1024,
      idleWindowSeconds: options.idleWindowSeconds,
      quietCpuPercentOfOneCore: (quiet / options.idleWindowSeconds) * 100,
      quietCpuMicrosecondsPerSessionPerSecond: (quiet / options.idleWindowSeconds / target) * 1e6,
      heartbeatsPerSecond,
      cpuMsPerHeartbeat: (((cpu - quiet) / options.idleWindowSeconds) * 1000) / heartbeatsPerSecond,
      idleCpuPercentOfOneCore: (cpu / options.idleWindowSeconds) * 100,
      idleCpuMicrosecondsPerSessionPerSecond: (cpu / options.idleWindowSeconds / target) * 1e6,
      taskReachMs: reached
    })
  }
  return steps
}
