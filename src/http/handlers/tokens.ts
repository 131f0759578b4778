import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { Tokens } from "../../tokens/Tokens.js"
import { RelayApi } from "../Api.js"

export const TokensLive = HttpApiBuilder.group(RelayApi, "tokens", (handlers) =>
  Effect.gen(function*() {
    const tokens = yield* Tokens
    return handlers
      .handle("create", ({ payload }) => tokens.create(payload))
      .handle("list", () => Effect.map(tokens.list, (data) => ({ data })))
      .handle("revoke", ({ path }) => tokens.revoke(path.id))
  }))
