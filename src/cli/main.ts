/** The `llm-relay` command line: serve | publish | migrate. */
import { Command } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { publish } from "../publisher/Command.js"
import { migrate } from "./migrate.js"
import { serve } from "./serve.js"

const root = Command.make("llm-relay").pipe(
  Command.withDescription("publish self-hosted LLMs to a broker and call them through an OpenAI-compatible API"),
  Command.withSubcommands([serve, publish, migrate])
)

const cli = Command.run(root, { name: "llm-relay", version: "0.1.0" })

cli(process.argv).pipe(Effect.provide(NodeContext.layer), NodeRuntime.runMain({ disableErrorReporting: false }))
