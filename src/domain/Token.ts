/** API tokens and the principal a request acts as. */
import { Schema } from "effect"

export const Role = Schema.Literal("admin", "publisher", "client")
export type Role = typeof Role.Type

/** Who a request acts as: the token's id is the principal id (owner of sessions and tasks). */
export interface Principal {
  readonly id: string
  readonly name: string
  readonly role: Role
}

export class TokenInfo extends Schema.Class<TokenInfo>("TokenInfo")({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  createdAt: Schema.Date,
  revokedAt: Schema.NullOr(Schema.Date)
}) {}

/** The answer to token creation: the only time the secret is shown. */
export class CreatedToken extends Schema.Class<CreatedToken>("CreatedToken")({
  id: Schema.String,
  name: Schema.String,
  role: Role,
  token: Schema.String
}) {}

export const CreateTokenRequest = Schema.Struct({
  role: Role,
  name: Schema.String.pipe(
    Schema.minLength(1, { message: () => "name must not be empty" }),
    Schema.maxLength(128, { message: () => "name must be at most 128 characters" })
  )
})
