/** The `llm-relay` command line: serve | publish | migrate | tokens. */
import { Command, ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { publish } from "../publisher/Command.js"
import { migrate } from "./migrate.js"
import { serve } from "./serve.js"
import { tokens } from "./tokens.js"

const root = Command.make("llm-relay").pipe(
  Command.withDescription("publish self-hosted LLMs to a broker and call them through an OpenAI-compatible API"),
  Command.withSubcommands([serve, publish, migrate, tokens])
)

const cli = Command.run(root, { name: "llm-relay", version: "0.1.0" })

/**
 * `--provider=name=…` as two words: @effect/cli reads `--flag=value` for
 * single options but not for the repeated `--provider`.
 */
export const normalizeArgv = (argv: ReadonlyArray<string>): Array<string> =>
  argv.flatMap((arg) => (arg.startsWith("--provider=") ? ["--provider", arg.slice("--provider=".length)] : [arg]))

cli(normalizeArgv(process.argv)).pipe(
  // a usage mistake (unknown flag or subcommand, bad value): @effect/cli has
  // printed what is wrong; exit 2 as for the publisher's own usage errors
  Effect.catchIf(ValidationError.isValidationError, () =>
    Effect.sync(() => {
      process.exitCode = 2
    })),
  // The CLI exports no traces, so spans (one per request, statement and
  // Effect.fn call) would only cost CPU on the hot path: about 12% of the
  // broker's CPU per request at concurrency 64 in the bench (A/B, two runs
  // each). Programs that embed the Layers keep their own tracer.
  Effect.withTracerEnabled(false),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: false })
)
