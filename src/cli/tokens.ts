/**
 * `llm-relay tokens create|list|revoke`: what `/v1/tokens` does, on the
 * database directly (DATABASE_URL, or the embedded one of RELAY_DATA_DIR
 * while no broker runs on it): the way back in when the admin token is lost.
 * Migrates first, so it works on a database no broker has started on yet.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Layer, Logger, LogLevel, Option } from "effect"
import * as Database from "../db/Database.js"
import { migrate } from "../db/Migrator.js"
import { PrincipalId, TokenName } from "../domain/Token.js"
import { Tokens } from "../tokens/Tokens.js"

const role = Options.choice("role", ["admin", "publisher", "client"]).pipe(
  Options.withDescription("what the token may do")
)
const name = Options.text("name").pipe(
  Options.withSchema(TokenName),
  Options.withDescription("a label for people (1-128 characters)")
)
const principal = Options.text("principal").pipe(
  Options.withSchema(
    PrincipalId.annotations({ message: () => "--principal must be 1-128 characters of A-Z, a-z, 0-9, _ or -" })
  ),
  Options.withDescription("another token for this existing principal (rotation); without it, a new principal"),
  Options.optional
)
const tokenId = Args.text({ name: "id" }).pipe(Args.withDescription("the token's id (see `tokens list`)"))

/** A refusal (no such principal or token): said on stderr, exit 1. */
const refuse = (command: string) => (error: { readonly message: string }) =>
  Effect.sync(() => {
    console.error(`llm-relay tokens ${command}: ${error.message}`)
    process.exitCode = 1
  })

/**
 * The command's work on a migrated database. Only warnings are logged, so
 * what `create` prints (the secret) can be piped.
 */
const onDatabase = <A, E>(effect: Effect.Effect<A, E, Tokens>) =>
  Effect.zipRight(migrate(), effect).pipe(
    Effect.provide(Tokens.layer),
    Effect.provide(Layer.orDie(Database.layerFromEnv)),
    Logger.withMinimumLogLevel(LogLevel.Warning)
  )

const create = Command.make("create", { role, name, principal }, (args) =>
  onDatabase(
    Effect.flatMap(Tokens, (tokens) =>
      tokens.create({ role: args.role, name: args.name, principalId: Option.getOrUndefined(args.principal) })).pipe(
        Effect.flatMap((created) =>
          Effect.sync(() => {
            // the answer of POST /v1/tokens: the secret, shown this once
            console.log(JSON.stringify(created))
          })
        ),
        Effect.catchTag("BadRequest", refuse("create"))
      )
  )).pipe(Command.withDescription("make a token (its secret is printed once, as JSON)"))

const isoOrDash = (date: Date | null) => (date === null ? "-" : date.toISOString())

const list = Command.make("list", {}, () =>
  onDatabase(Effect.gen(function*() {
    const tokens = yield* (yield* Tokens).list
    const rows = [
      ["ID", "NAME", "ROLE", "PRINCIPAL", "CREATED", "REVOKED"],
      ...tokens.map((t) => [t.id, t.name, t.role, t.principalId, isoOrDash(t.createdAt), isoOrDash(t.revokedAt)])
    ]
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)))
    yield* Effect.sync(() => {
      for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd())
    })
  }))).pipe(Command.withDescription("list the tokens (no secrets), oldest first, with their principal"))

const revoke = Command.make("revoke", { tokenId }, (args) =>
  onDatabase(
    Effect.flatMap(Tokens, (tokens) => tokens.revoke(args.tokenId)).pipe(
      Effect.flatMap(({ revokedNow, token }) =>
        Effect.sync(() => {
          console.log(
            revokedNow
              ? `revoked ${token.id} (principal ${token.principalId})`
              : `${token.id} was already revoked (${isoOrDash(token.revokedAt)})`
          )
        })
      ),
      Effect.catchTag("NotFound", refuse("revoke"))
    )
  )).pipe(
    Command.withDescription(
      "revoke a token: refused from then on (a running broker notices within 5 s); unlike DELETE /v1/tokens/:id, " +
        "it cannot close a running broker's open task streams"
    )
  )

export const tokens = Command.make("tokens").pipe(
  Command.withDescription("make, list and revoke API tokens on the database directly"),
  Command.withSubcommands([create, list, revoke])
)
