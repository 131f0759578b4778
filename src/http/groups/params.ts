/** Query parameters the listings share. */
import { Schema } from "effect"

/** An empty query parameter (`?status=`) is as good as an absent one. */
export const blank = Schema.Literal("")

/** `?limit=`: 1..`max`, `default` when absent or empty (decoded to a number either way). */
export const limitParam = (max: number, fallback: number) =>
  Schema.optionalWith(
    Schema.Union(
      blank,
      Schema.NumberFromString.pipe(Schema.int(), Schema.between(1, max, { message: () => `limit must be 1-${max}` }))
    ).pipe(
      Schema.transform(Schema.Number, { strict: true, decode: (n) => (n === "" ? fallback : n), encode: (n) => n })
    ),
    { default: () => fallback }
  )
