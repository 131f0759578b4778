/** API tokens, the principals they belong to, and the principal a request acts as. */
import { Schema } from "effect"

export const Role = Schema.Literal("admin", "publisher", "client")
export type Role = typeof Role.Type

/**
 * A principal's id: opaque, 1..128 chars of `[A-Za-z0-9_-]`. New principals
 * get `prn_<random>`; a token made before principals existed is its own
 * principal, its id its token id (`tok_…`, `admin-env`).
 */
export const PrincipalId = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9_-]{1,128}$/, {
    message: () => "must be 1-128 characters of A-Z, a-z, 0-9, _ or -"
  })
)

/**
 * Who a request acts as. `id` is the principal's id, the owner of everything
 * made with any of its tokens (sessions, tasks, names, pools); `tokenId` is
 * the token presented, which rotation replaces. `name` and `role` are the
 * token's: a principal's tokens may have different roles.
 */
export interface Principal {
  readonly id: string
  readonly tokenId: string
  readonly name: string
  readonly role: Role
}

export class TokenInfo extends Schema.Class<TokenInfo>("TokenInfo")({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  principalId: Schema.String,
  createdAt: Schema.Date,
  revokedAt: Schema.NullOr(Schema.Date)
}) {}

/** The answer to token creation: the only time the secret is shown. */
export class CreatedToken extends Schema.Class<CreatedToken>("CreatedToken")({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  principalId: Schema.String,
  token: Schema.String
}) {}

export const TokenName = Schema.String.pipe(
  Schema.minLength(1, { message: () => "name must not be empty" }),
  Schema.maxLength(128, { message: () => "name must be at most 128 characters" })
)

export const CreateTokenRequest = Schema.Struct({
  role: Role,
  name: TokenName,
  /** Another token for this existing principal; absent: a new principal. */
  principalId: Schema.optionalWith(PrincipalId, { exact: true })
})
export type CreateTokenRequest = typeof CreateTokenRequest.Type
