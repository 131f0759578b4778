/**
 * Bearer-token authentication (an HttpApi security middleware providing the
 * `CurrentPrincipal`), and the role checks handlers apply.
 */
import { HttpApiMiddleware, HttpApiSecurity, HttpRouter } from "@effect/platform"
import { Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import { Forbidden, Unauthorized } from "../domain/Errors.js"
import type { Principal, Role } from "../domain/Token.js"
import { Tokens } from "../tokens/Tokens.js"

export class CurrentPrincipal extends Context.Tag("llm-relay/CurrentPrincipal")<CurrentPrincipal, Principal>() {}

export class Authorization extends HttpApiMiddleware.Tag<Authorization>()("llm-relay/Authorization", {
  failure: Schema.Union(Unauthorized, Forbidden),
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
          // the role is checked here, before the body is read: a wrong role
          // is a 403 whatever the body holds
          const { route } = yield* HttpRouter.RouteContext
          const roles = routeRoles(route.method, route.path)
          if (roles !== undefined) yield* checkRole(principal.value, roles)
          return principal.value
        })
    }
  })
)

/**
 * The roles a route needs besides admin (PROTOCOL.md's roles), from the
 * matched route's method and path pattern (not the raw URL, which the router
 * normalises); undefined: any role.
 */
export const routeRoles = (method: string, pattern: string): ReadonlyArray<Role> | undefined => {
  const path = pattern.replace(/^.*?(?=\/v1\/)/, "") // a host app may mount the API under a prefix
  const under = (prefix: string) => path === prefix || path.startsWith(`${prefix}/`)
  if (under("/v1/publishers")) return ["publisher"]
  if (under("/v1/tokens")) return []
  if (under("/v1/llms")) return method === "GET" ? undefined : []
  return ["client"]
}

const checkRole = (principal: Principal, roles: ReadonlyArray<Role>) =>
  principal.role === "admin" || roles.includes(principal.role)
    ? Effect.succeed(principal)
    : Effect.fail(
      new Forbidden({
        message: `this route needs the ${[...roles, "admin"].join(" or ")} role; the token has '${principal.role}'`
      })
    )

/** The current principal, if its role is one of `roles` (admin always is). */
export const requireRole = (...roles: ReadonlyArray<Role>) =>
  Effect.flatMap(CurrentPrincipal, (principal) => checkRole(principal, roles))
