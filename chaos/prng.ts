/**
 * The run's only source of randomness: mulberry32, seeded. Each actor (a
 * client worker, the fault schedule) draws from its own stream derived from
 * the run's seed and its name, so what one actor draws does not depend on how
 * the others interleave: a seed replays every choice.
 */
export interface Prng {
  /** Uniform in [0, 1). */
  readonly next: () => number
  /** Integer in [min, max]. */
  readonly int: (min: number, max: number) => number
  /** True with probability p. */
  readonly chance: (p: number) => boolean
  readonly pick: <A>(items: ReadonlyArray<A>) => A
}

export const mulberry32 = (seed: number): Prng => {
  let state = seed >>> 0
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const int = (min: number, max: number) => min + Math.floor(next() * (max - min + 1))
  return {
    next,
    int,
    chance: (p) => next() < p,
    pick: (items) => items[int(0, items.length - 1)]!
  }
}

/** FNV-1a of `label`, mixed with the seed: the seed of one actor's stream. */
export const derive = (seed: number, label: string): Prng => {
  let h = 0x811c9dc5 ^ (seed >>> 0)
  for (let i = 0; i < label.length; i++) {
    h ^= label.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return mulberry32(h)
}

/** A seed for a run that did not name one (printed, so the run can be replayed). */
export const randomSeed = (): number => Math.floor(Math.random() * 2 ** 31)
