/**
 * PostgreSQL text and jsonb cannot hold U+0000, and jsonb refuses a lone
 * UTF-16 surrogate (`"\ud800"`, valid in a JavaScript string, not in
 * Unicode). A client request that carries either in anything it decodes (a
 * body at any depth, keys included, a path or query parameter) is a 400
 * naming the field, refused while decoding, before any statement runs.
 * Publisher text (results, chunks, errors) is the upstream's answer, not the
 * publisher's mistake: its lone surrogates become U+FFFD (`replaceLoneSurrogates`)
 * instead, as PROTOCOL.md says; its NULs are still refused.
 */
import { Predicate, Schema } from "effect"

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/
const LONE_SURROGATES = new RegExp(LONE_SURROGATE.source, "g")

type Problem = "nul" | "surrogate" | "depth"

/** Deeper JSON is refused: no request needs it, and PostgreSQL's jsonb and recursive readers choke on it. */
export const MAX_DEPTH = 128

const problemOf = (text: string, surrogates: boolean): Problem | undefined =>
  text.includes("\u0000") ? "nul" : surrogates && LONE_SURROGATE.test(text) ? "surrogate" : undefined

/** The path to the first string (a value or a key) that cannot be stored, and why. */
const findUnstorable = (
  value: unknown,
  path: ReadonlyArray<PropertyKey>,
  surrogates: boolean
): { readonly path: ReadonlyArray<PropertyKey>; readonly problem: Problem } | undefined => {
  if (path.length > MAX_DEPTH) return { path: path.slice(0, 3), problem: "depth" }
  if (typeof value === "string") {
    const problem = problemOf(value, surrogates)
    return problem === undefined ? undefined : { path, problem }
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findUnstorable(value[i], [...path, i], surrogates)
      if (found !== undefined) return found
    }
    return undefined
  }
  if (Predicate.isRecord(value)) {
    for (const [key, member] of Object.entries(value)) {
      const problem = problemOf(key, surrogates)
      if (problem !== undefined) return { path: [...path, key], problem }
      const found = findUnstorable(member, [...path, key], surrogates)
      if (found !== undefined) return found
    }
  }
  return undefined
}

const messages: Record<Problem, string> = {
  nul: "holds a NUL character (\\u0000), which cannot be stored",
  surrogate: "holds a lone UTF-16 surrogate (such as \\ud800), which is not valid Unicode",
  depth: `is nested deeper than ${MAX_DEPTH} levels`
}

/**
 * `schema`, refusing a value that holds U+0000 anywhere, or (unless
 * `loneSurrogates` is "allow", for publisher text that is cleaned instead) a
 * lone surrogate.
 */
export const storable = <A, I, R>(
  schema: Schema.Schema<A, I, R>,
  options: { readonly loneSurrogates: "refuse" | "allow" } = { loneSurrogates: "refuse" }
) =>
  schema.pipe(
    Schema.filter((value) => {
      const found = findUnstorable(value, [], options.loneSurrogates === "refuse")
      return found === undefined ? undefined : { path: found.path, message: messages[found.problem] }
    })
  )

/** A copy of `value` with every lone surrogate in its strings (keys too) replaced by U+FFFD. */
export const replaceLoneSurrogates = <A>(value: A): A => {
  if (typeof value === "string") {
    return (LONE_SURROGATE.test(value) ? value.replace(LONE_SURROGATES, "\uFFFD") : value) as A
  }
  if (Array.isArray(value)) return value.map(replaceLoneSurrogates) as A
  if (Predicate.isRecord(value)) {
    return Object.fromEntries(
      Object.entries(value).map(([key, member]) => [replaceLoneSurrogates(key), replaceLoneSurrogates(member)])
    ) as A
  }
  return value
}
