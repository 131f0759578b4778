/**
 * Bearer-token authentication and the role policy, as HttpApi security
 * middleware providing the `CurrentPrincipal`: one per policy, and each group
 * (or, in the registry, each endpoint) names the one it follows. The token and
 * the role are checked before the handler runs, so before the body is read:
 * a wrong role is a 403 whatever the body holds. Admin passes everywhere.
 */
import { HttpApiMiddleware, HttpApiSecurity } from "@effect/platform"
import { Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import { Forbidden, Unauthorized } from "../domain/Errors.js"
import type { Principal, Role } from "../domain/Token.js"
import { Tokens } from "../tokens/Tokens.js"
import { asWire } from "./Errors.js"

export class CurrentPrincipal extends Context.Tag("llm-relay/CurrentPrincipal")<CurrentPrincipal, Principal>() {}

const bearer = {
  failure: Schema.Union(asWire(Unauthorized), asWire(Forbidden)),
  provides: CurrentPrincipal,
  security: { bearer: HttpApiSecurity.bearer }
} as const

/** Any valid token, whatever its role. */
export class Authorization extends HttpApiMiddleware.Tag<Authorization>()("llm-relay/Authorization", bearer) {}

/** Role client (or admin): inference and own tasks. */
export class ClientAuthorization
  extends HttpApiMiddleware.Tag<ClientAuthorization>()("llm-relay/ClientAuthorization", bearer)
{}

/** Role publisher (or admin): publisher sessions. */
export class PublisherAuthorization
  extends HttpApiMiddleware.Tag<PublisherAuthorization>()("llm-relay/PublisherAuthorization", bearer)
{}

/** Role admin only. */
export class AdminAuthorization
  extends HttpApiMiddleware.Tag<AdminAuthorization>()("llm-relay/AdminAuthorization", bearer)
{}

/**
 * The principal of a bearer token, if its role is admin or one of `roles`
 * (undefined: any role).
 */
const authenticate = (roles: ReadonlyArray<Role> | undefined) =>
  Effect.map(Tokens, (tokens) => ({
    bearer: (token: Redacted.Redacted<string>) =>
      Effect.gen(function*() {
        const secret = Redacted.value(token)
        if (secret.length === 0) {
          return yield* new Unauthorized({ message: "missing bearer token (Authorization: Bearer <token>)" })
        }
        const found = yield* tokens.verify(secret)
        if (Option.isNone(found)) {
          return yield* new Unauthorized({ message: "unknown or revoked token" })
        }
        const principal = found.value
        if (roles !== undefined && principal.role !== "admin" && !roles.includes(principal.role)) {
          return yield* new Forbidden({
            message: `this route needs the ${[...roles, "admin"].join(" or ")} role; the token has '${principal.role}'`
          })
        }
        return principal
      })
  }))

export const AuthorizationLive = Layer.mergeAll(
  Layer.effect(Authorization, authenticate(undefined)),
  Layer.effect(ClientAuthorization, authenticate(["client"])),
  Layer.effect(PublisherAuthorization, authenticate(["publisher"])),
  Layer.effect(AdminAuthorization, authenticate([]))
)
