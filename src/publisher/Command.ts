/**
 * `llm-relay publish`: serve local OpenAI-compatible models through a broker.
 * Bad input (unknown keys, missing fields, no server or token) is reported
 * with the bad part named and exit code 2, before anything connects.
 */
import { Command, Options } from "@effect/cli"
import { NodeHttpClient } from "@effect/platform-node"
import { Config, Duration, Effect, Logger, LogLevel, Option } from "effect"
import { checkProviders, loadConfigFile, parseProvider, type Provider, PublisherConfigError } from "./Config.js"
import * as Publisher from "./Publisher.js"

const server = Options.text("server").pipe(
  Options.withDescription("the broker's URL, e.g. http://127.0.0.1:8080 (env RELAY_SERVER)"),
  Options.withFallbackConfig(Config.string("RELAY_SERVER")),
  Options.optional
)
const token = Options.text("token").pipe(
  Options.withDescription("a publisher token (env RELAY_TOKEN)"),
  Options.withFallbackConfig(Config.string("RELAY_TOKEN")),
  Options.optional
)
const provider = Options.text("provider").pipe(
  Options.withDescription(
    "name=N,upstream=http://host:port/v1,model=M[,pool=P][,tier=T][,maxConcurrent=K][,apiKey=KEY] (repeatable)"
  ),
  Options.repeated
)
const config = Options.text("config").pipe(
  Options.withDescription("a JSON file: {\"server\"?, \"token\"?, \"providers\": [{name, upstream, model, …}]}"),
  Options.optional
)
const sessionId = Options.text("session-id").pipe(
  Options.withDescription("a sticky session id to reuse (8-128 of A-Z a-z 0-9 _ -)"),
  Options.optional
)
const drainSeconds = Options.integer("drain-timeout").pipe(
  Options.withDescription("seconds in-flight tasks may take to finish on SIGTERM"),
  Options.withDefault(30)
)
const quiet = Options.boolean("quiet").pipe(Options.withDescription("log warnings and errors only"))
const verbose = Options.boolean("verbose").pipe(Options.withDescription("log frames, heartbeats and retries too"))

const usageError = (message: string) =>
  Effect.zipRight(
    Effect.sync(() => {
      console.error(`llm-relay publish: ${message}`)
      process.exitCode = 2
    }),
    Effect.void
  )

export const publish = Command.make(
  "publish",
  { server, token, provider, config, sessionId, drainSeconds, quiet, verbose },
  (args) =>
    Effect.gen(function*() {
      const file = Option.isSome(args.config) ? yield* loadConfigFile(args.config.value) : undefined
      const fromFlags: Array<Provider> = []
      for (const text of args.provider) fromFlags.push(yield* parseProvider(text))
      const providers = yield* checkProviders([...(file?.providers ?? []), ...fromFlags])
      const serverUrl = Option.getOrUndefined(args.server) ?? file?.server
      const tokenValue = Option.getOrUndefined(args.token) ?? file?.token
      if (serverUrl === undefined) {
        return yield* new PublisherConfigError({ message: "no broker: give --server or RELAY_SERVER" })
      }
      if (!/^https?:\/\//.test(serverUrl)) {
        return yield* new PublisherConfigError({ message: `--server must be an http(s) URL, got '${serverUrl}'` })
      }
      if (tokenValue === undefined || tokenValue === "") {
        return yield* new PublisherConfigError({ message: "no token: give --token or RELAY_TOKEN" })
      }
      const level = args.quiet ? LogLevel.Warning : args.verbose ? LogLevel.Debug : LogLevel.Info
      yield* Effect.logInfo(`publishing ${providers.map((p) => `${p.name} (${p.upstream}, ${p.model})`).join(", ")}`)
      return yield* Publisher.run({
        server: serverUrl,
        token: tokenValue,
        providers,
        sessionId: Option.getOrUndefined(args.sessionId) ?? file?.sessionId,
        drainTimeout: Duration.seconds(args.drainSeconds)
      }).pipe(
        Effect.scoped,
        Effect.provide(NodeHttpClient.layerUndici),
        Logger.withMinimumLogLevel(level)
      )
    }).pipe(
      Effect.catchTag("PublisherConfigError", (e) => usageError(e.message)),
      Effect.catchTag("PublisherFatal", (e) =>
        Effect.sync(() => {
          console.error(`llm-relay publish: ${e.message}`)
          process.exitCode = 1
        }))
    )
).pipe(Command.withDescription("publish local OpenAI-compatible models through a broker"))
