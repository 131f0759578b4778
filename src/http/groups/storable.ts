/**
 * PostgreSQL text and jsonb cannot hold U+0000. A request that carries one in
 * anything it decodes (a body at any depth, keys included, a path or query
 * parameter) is a 400 naming the field, refused while decoding, before any
 * statement runs.
 */
import { Predicate, Schema } from "effect"

/** The path to the first string (a value or a key) holding U+0000. */
const findNul = (value: unknown, path: ReadonlyArray<PropertyKey>): ReadonlyArray<PropertyKey> | undefined => {
  if (typeof value === "string") return value.includes("\u0000") ? path : undefined
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findNul(value[i], [...path, i])
      if (found !== undefined) return found
    }
    return undefined
  }
  if (Predicate.isRecord(value)) {
    for (const [key, member] of Object.entries(value)) {
      if (key.includes("\u0000")) return [...path, key]
      const found = findNul(member, [...path, key])
      if (found !== undefined) return found
    }
  }
  return undefined
}

/** `schema`, refusing a value that holds U+0000 anywhere. */
export const storable = <A, I, R>(schema: Schema.Schema<A, I, R>) =>
  schema.pipe(
    Schema.filter((value) => {
      const path = findNul(value, [])
      return path === undefined
        ? undefined
        : { path, message: "holds a NUL character (\\u0000), which cannot be stored" }
    })
  )
