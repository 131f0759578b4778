import { HttpApiEndpoint, HttpApiGroup, HttpApiSchema } from "@effect/platform"
import { Schema } from "effect"
import { Llm, LlmName, Pool } from "../../domain/Llm.js"
import { AdminAuthorization, Authorization } from "../Auth.js"
import { limitParam } from "./params.js"
import { storable } from "./storable.js"

export const CreatePublicLlm = Schema.Struct({
  name: LlmName,
  model: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(512)),
  url: Schema.String.pipe(
    Schema.filter((s) => URL.canParse(s) && /^https?:/.test(s), { message: () => "url must be an http(s) URL" }),
    // credentials in a URL would travel wherever the URL does: the upstream's key goes in apiKey
    Schema.filter((s) => {
      const url = new URL(s)
      return url.username === "" && url.password === ""
    }, { message: () => "url must not hold credentials (user:password@); give the upstream's key as apiKey" })
  ),
  apiKey: Schema.optional(Schema.String),
  pool: Schema.optional(LlmName),
  tier: Schema.optionalWith(Schema.String, { default: () => "fast" }),
  description: Schema.optionalWith(Schema.String, { default: () => "" })
})

/** `?limit=&cursor=`: rows by name, a page at a time. */
export const LlmListParams = Schema.Struct({
  limit: limitParam(1000, 500),
  cursor: Schema.optional(Schema.String)
})

export const SharePool = Schema.Struct({ shared: Schema.Boolean })

/** The LLM registry as seen by any token; public LLMs and pool sharing are managed by admins. */
export class RegistryApi extends HttpApiGroup.make("registry")
  .add(
    HttpApiEndpoint.get("list", "/v1/llms")
      .setUrlParams(storable(LlmListParams))
      .addSuccess(Schema.Struct({ data: Schema.Array(Llm), nextCursor: Schema.NullOr(Schema.String) }))
      .middleware(Authorization)
  )
  .add(
    HttpApiEndpoint.get("pools", "/v1/pools")
      .addSuccess(Schema.Struct({ data: Schema.Array(Pool) }))
      .middleware(Authorization)
  )
  .add(
    HttpApiEndpoint.put("sharePool", "/v1/pools/:name")
      .setPath(storable(Schema.Struct({ name: Schema.String })))
      .setPayload(storable(SharePool))
      .addSuccess(Pool)
      .middleware(AdminAuthorization)
  )
  .add(
    HttpApiEndpoint.post("create", "/v1/llms")
      .setPayload(storable(CreatePublicLlm))
      .addSuccess(Llm, { status: 201 })
      .middleware(AdminAuthorization)
  )
  .add(
    HttpApiEndpoint.del("delete", "/v1/llms/:name")
      .setPath(storable(Schema.Struct({ name: Schema.String })))
      .addSuccess(HttpApiSchema.NoContent)
      .middleware(AdminAuthorization)
  )
{}
