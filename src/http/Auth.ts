/**
 * Bearer-token authentication (an HttpApi security middleware providing the
 * `CurrentPrincipal`), and the role checks handlers apply.
 */
import { HttpApiMiddleware, HttpApiSecurity } from "@effect/platform"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { Forbidden, Unauthorized } from "../domain/Errors.js"
import type { Principal, Role } from "../domain/Token.js"
import { Tokens } from "../tokens/Tokens.js"

export class CurrentPrincipal extends Context.Tag("llm-relay/CurrentPrincipal")<CurrentPrincipal, Principal>() {}

export class Authorization extends HttpApiMiddleware.Tag<Authorization>()("llm-relay/Authorization", {
  failure: Unauthorized,
  provides: CurrentPrincipal,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

export const AuthorizationLive = Layer.effect(
  Authorization,
  Effect.gen(function* () {
    const tokens = yield* Tokens
    return {
      bearer: (token: Redacted.Redacted<string>) =>
        Effect.gen(function* () {
          const secret = Redacted.value(token)
          if (secret.length === 0) {
            return yield* new Unauthorized({ message: "missing bearer token (Authorization: Bearer <token>)" })
          }
          const principal = yield* tokens.verify(secret)
          if (Option.isNone(principal)) {
            return yield* new Unauthorized({ message: "unknown or revoked token" })
          }
          return principal.value
        })
    }
  })
)

/** The current principal, if its role is one of `roles` (admin always is). */
export const requireRole = (...roles: ReadonlyArray<Role>) =>
  Effect.flatMap(CurrentPrincipal, (principal) =>
    principal.role === "admin" || roles.includes(principal.role)
      ? Effect.succeed(principal)
      : Effect.fail(
          new Forbidden({
            message: `this route needs the ${[...roles, "admin"].join(" or ")} role; the token has '${principal.role}'`
          })
        )
  )
