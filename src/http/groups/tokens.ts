import { HttpApiEndpoint, HttpApiGroup, HttpApiSchema } from "@effect/platform"
import { Schema } from "effect"
import { CreatedToken, CreateTokenRequest, TokenInfo } from "../../domain/Token.js"
import { AdminAuthorization } from "../Auth.js"
import { storable } from "./storable.js"

/** Token administration (admin only). */
export class TokensApi extends HttpApiGroup.make("tokens")
  .add(
    HttpApiEndpoint.post("create", "/v1/tokens")
      .setPayload(storable(CreateTokenRequest))
      .addSuccess(CreatedToken, { status: 201 })
  )
  .add(HttpApiEndpoint.get("list", "/v1/tokens").addSuccess(Schema.Struct({ data: Schema.Array(TokenInfo) })))
  .add(
    HttpApiEndpoint.del("revoke", "/v1/tokens/:id")
      .setPath(storable(Schema.Struct({ id: Schema.String })))
      .addSuccess(HttpApiSchema.NoContent)
  )
  .middleware(AdminAuthorization)
{}
