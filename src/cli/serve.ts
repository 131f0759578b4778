/** `llm-relay serve`: database (URL or embedded), migrations, sweeper, HTTP. */
import { Command, Options } from "@effect/cli"
import { Config, Effect, Layer, Option } from "effect"
import * as Broker from "../Broker.js"
import { InstanceId, RelayConfig } from "../config.js"
import * as Database from "../db/Database.js"
import { EmbeddedPostgresError } from "../db/Embedded.js"
import { HttpLive, NodeServerLive } from "../http/Server.js"
import { AdminTokenConfig, Tokens } from "../tokens/Tokens.js"

const host = Options.text("host").pipe(
  Options.withDescription("address to listen on (env HOST)"),
  Options.withFallbackConfig(Config.string("HOST")),
  Options.withDefault("127.0.0.1")
)
const port = Options.integer("port").pipe(
  Options.withDescription("port to listen on (env PORT)"),
  Options.withFallbackConfig(Config.integer("PORT")),
  Options.withDefault(8080)
)

/** Print a generated admin token once, on the first start without RELAY_ADMIN_TOKEN. */
const seedAdmin = Layer.effectDiscard(
  Effect.gen(function*() {
    const tokens = yield* Tokens
    const generated = yield* tokens.ensureAdmin(yield* Effect.orDie(AdminTokenConfig))
    if (Option.isSome(generated)) {
      yield* Effect.sync(() =>
        console.log(
          `\nGenerated an admin token (shown once; set RELAY_ADMIN_TOKEN to choose your own):\n\n  ${generated.value.token}\n`
        )
      )
    }
  })
)

/** The broker and its HTTP server over a provided SqlClient and config (tests host this too). */
export const appLayer = (options: { readonly host: string; readonly port: number }) =>
  HttpLive.pipe(
    Layer.provideMerge(NodeServerLive(options)),
    Layer.provideMerge(seedAdmin),
    Layer.provideMerge(Broker.layer)
  )

export const serveLayer = (options: { readonly host: string; readonly port: number }) =>
  appLayer(options).pipe(
    Layer.provide(Layer.mergeAll(Database.layerFromEnv, RelayConfig.layer, InstanceId.layer)),
    Layer.orDie
  )

/**
 * The embedded database failing to start is the user's to fix (a leftover
 * server, a directory it cannot reach): one line saying what and how, not a
 * stack trace.
 */
const reportEmbedded = (defect: unknown) =>
  defect instanceof EmbeddedPostgresError
    ? Effect.sync(() => {
      console.error(`llm-relay: ${defect.message}`)
      process.exitCode = 1
    })
    : Effect.die(defect)

export const serve = Command.make("serve", { host, port }, (options) =>
  // a bad RELAY_ADMIN_TOKEN stops the start before the database is touched
  Effect.zipRight(AdminTokenConfig, Layer.launch(serveLayer(options))).pipe(Effect.catchAllDefect(reportEmbedded)))
  .pipe(
    Command.withDescription("run the broker (HTTP API, task queue, sweeper)")
  )
