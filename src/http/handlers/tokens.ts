import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { Sessions } from "../../sessions/Sessions.js"
import { Tokens } from "../../tokens/Tokens.js"
import { RelayApi } from "../Api.js"

export const TokensLive = HttpApiBuilder.group(RelayApi, "tokens", (handlers) =>
  Effect.gen(function*() {
    const tokens = yield* Tokens
    const sessions = yield* Sessions
    return handlers
      .handle("create", ({ payload }) => tokens.create(payload))
      .handle("list", () => Effect.map(tokens.list, (data) => ({ data })))
      // a token is its own principal: its publisher sessions end with it, their streams closed at once
      .handle("revoke", ({ path }) =>
        Effect.zipRight(tokens.revoke(path.id), Effect.asVoid(sessions.closeAllOf(path.id))))
  }))
