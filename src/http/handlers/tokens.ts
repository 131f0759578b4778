import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { Tokens } from "../../tokens/Tokens.js"
import { RelayApi } from "../Api.js"
import { requireRole } from "../Auth.js"

export const TokensLive = HttpApiBuilder.group(RelayApi, "tokens", (handlers) =>
  Effect.gen(function* () {
    const tokens = yield* Tokens
    const admin = requireRole()
    return handlers
      .handle("create", ({ payload }) => Effect.zipRight(admin, tokens.create(payload)))
      .handle("list", () => Effect.zipRight(admin, Effect.map(tokens.list, (data) => ({ data }))))
      .handle("revoke", ({ path }) => Effect.zipRight(admin, tokens.revoke(path.id)))
  }))
