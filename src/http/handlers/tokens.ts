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
      // The principal's publisher sessions end with the token, their streams
      // closed at once, even when the principal has other tokens: the session
      // may be running on the revoked one, and a publisher holding another
      // reconnects with it. Revoking a revoked token closes nothing (the
      // principal may be running on its new token by now).
      .handle("revoke", ({ path }) =>
        Effect.flatMap(
          tokens.revoke(path.id),
          ({ revokedNow, token }) => revokedNow ? Effect.asVoid(sessions.closeAllOf(token.principalId)) : Effect.void
        ))
  }))
