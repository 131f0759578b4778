/**
 * What a publisher serves: its providers (one per local model), from
 * `--provider name=N,upstream=URL,model=M[,pool=P][,tier=T][,maxConcurrent=K]`
 * strings or a JSON `--config` file with the same fields. Every mistake is a
 * `PublisherConfigError` naming the bad part, before anything connects.
 */
import { Data, Effect, Either, ParseResult, Schema } from "effect"
import * as Fs from "node:fs"
import { joinUpstream } from "../domain/Url.js"

export class PublisherConfigError extends Data.TaggedError("PublisherConfigError")<{ readonly message: string }> {}

const Url = Schema.String.pipe(
  Schema.filter((s) => {
    try {
      const url = new URL(s)
      return url.protocol === "http:" || url.protocol === "https:" || `must be an http(s) URL, got '${s}'`
    } catch {
      return `must be an http(s) URL, got '${s}'`
    }
  })
)

export const Provider = Schema.Struct({
  /** The LLM name clients call (and the row's name at the broker). */
  name: Schema.String.pipe(
    Schema.pattern(/^[A-Za-z0-9._:/-]{1,128}$/, {
      message: () => "name must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':', '/' or '-'"
    })
  ),
  /** The local server's OpenAI base URL, as the openai SDK takes it (ending in /v1). */
  upstream: Url,
  /** The model name the upstream knows; a task's `model` field is rewritten to it. */
  model: Schema.String.pipe(Schema.minLength(1, { message: () => "model must not be empty" })),
  pool: Schema.optional(
    Schema.String.pipe(
      Schema.pattern(/^[A-Za-z0-9._:/-]{1,128}$/, { message: () => "pool must be 1-128 name characters" })
    )
  ),
  tier: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  description: Schema.optional(Schema.String),
  maxConcurrent: Schema.optionalWith(
    Schema.Int.pipe(Schema.between(1, 1024, { message: () => "maxConcurrent must be an integer from 1 to 1024" })),
    { default: () => 4 }
  ),
  /** Bearer key for the upstream (vLLM --api-key), if it wants one. */
  apiKey: Schema.optional(Schema.String)
})
export type Provider = typeof Provider.Type

export const ConfigFile = Schema.Struct({
  server: Schema.optional(Url),
  token: Schema.optional(Schema.String),
  sessionId: Schema.optional(Schema.String),
  providers: Schema.Array(Provider).pipe(
    Schema.minItems(1, { message: () => "providers must list at least one provider" })
  )
})
export type ConfigFile = typeof ConfigFile.Type

const KEYS = ["name", "upstream", "model", "pool", "tier", "maxConcurrent", "apiKey", "description"] as const

const describe = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ")

const decodeProvider = Schema.decodeUnknownEither(Provider, { errors: "all", onExcessProperty: "error" })
const decodeFile = Schema.decodeUnknownEither(ConfigFile, { errors: "all", onExcessProperty: "error" })

/** `name=N,upstream=URL,model=M,…` → a Provider, or an error naming the bad key or value. */
export const parseProvider = (text: string): Either.Either<Provider, PublisherConfigError> => {
  const fail = (why: string) => Either.left(new PublisherConfigError({ message: `--provider '${text}': ${why}` }))
  const fields: Record<string, unknown> = {}
  for (const part of text.split(",")) {
    if (part.trim() === "") continue
    const eq = part.indexOf("=")
    if (eq <= 0) return fail(`'${part}' is not key=value`)
    const key = part.slice(0, eq).trim()
    const value = part.slice(eq + 1).trim()
    if (!(KEYS as ReadonlyArray<string>).includes(key)) {
      return fail(`unknown key '${key}' (known: ${KEYS.join(", ")})`)
    }
    if (key in fields) return fail(`'${key}' is given twice`)
    if (key === "maxConcurrent") {
      if (!/^\d+$/.test(value)) return fail(`maxConcurrent must be an integer from 1 to 1024, got '${value}'`)
      fields[key] = Number(value)
    } else {
      fields[key] = value
    }
  }
  for (const required of ["name", "upstream", "model"]) {
    if (!(required in fields)) return fail(`missing '${required}'`)
  }
  return Either.mapLeft(
    decodeProvider(fields),
    (error) => new PublisherConfigError({ message: `--provider '${text}': ${describe(error)}` })
  )
}

/** Reads and checks a JSON config file (`{"server"?, "token"?, "providers": [...]}`). */
export const loadConfigFile = (path: string): Effect.Effect<ConfigFile, PublisherConfigError> =>
  Effect.gen(function*() {
    const text = yield* Effect.try({
      try: () => Fs.readFileSync(path, "utf8"),
      catch: (cause) => new PublisherConfigError({ message: `--config ${path}: cannot read it (${String(cause)})` })
    })
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (cause) => new PublisherConfigError({ message: `--config ${path}: not valid JSON (${String(cause)})` })
    })
    return yield* Either.mapLeft(
      decodeFile(json),
      (error) => new PublisherConfigError({ message: `--config ${path}: ${describe(error)}` })
    )
  })

/** Provider names must be unique within one publisher. */
export const checkProviders = (
  providers: ReadonlyArray<Provider>
): Either.Either<ReadonlyArray<Provider>, PublisherConfigError> => {
  if (providers.length === 0) {
    return Either.left(new PublisherConfigError({ message: "no providers: give --provider (repeatable) or --config" }))
  }
  const names = providers.map((p) => p.name)
  const duplicate = names.find((n, i) => names.indexOf(n) !== i)
  return duplicate === undefined
    ? Either.right(providers)
    : Either.left(new PublisherConfigError({ message: `the provider name '${duplicate}' is listed twice` }))
}

/**
 * The upstream URL of a task: the provider's base (ending in /v1) joined with
 * the task's path without repeating /v1 (the shared `joinUpstream`).
 */
export const upstreamUrl: (base: string, path: string) => string = joinUpstream
