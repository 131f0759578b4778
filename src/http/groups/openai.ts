import { HttpApiEndpoint, HttpApiGroup } from "@effect/platform"
import { Schema } from "effect"
import { ClientAuthorization } from "../Auth.js"
import { storable } from "./storable.js"

/** An OpenAI request body: `model` is required, everything else passes through untouched. */
export const InferenceRequest = Schema.Struct(
  { model: Schema.String.pipe(Schema.minLength(1, { message: () => "model must not be empty" })) },
  { key: Schema.String, value: Schema.Unknown }
)

export const ModelEntry = Schema.Struct({
  id: Schema.String,
  object: Schema.Literal("model"),
  created: Schema.Int,
  owned_by: Schema.String,
  kind: Schema.String,
  pool: Schema.String,
  tier: Schema.String,
  status: Schema.String
})

const inference = <const Name extends string>(name: Name, path: `/${string}`) =>
  HttpApiEndpoint.post(name, path).setPayload(storable(InferenceRequest)).addSuccess(Schema.Unknown)

/** The OpenAI-compatible surface (role client or admin). */
export class OpenAiApi extends HttpApiGroup.make("openai")
  .add(
    HttpApiEndpoint.get("models", "/v1/models").addSuccess(
      Schema.Struct({ object: Schema.Literal("list"), data: Schema.Array(ModelEntry) })
    )
  )
  .add(
    HttpApiEndpoint.get("model", "/v1/models/:id").setPath(Schema.Struct({ id: Schema.String })).addSuccess(ModelEntry)
  )
  .add(inference("chatCompletions", "/v1/chat/completions"))
  .add(inference("completions", "/v1/completions"))
  .add(inference("embeddings", "/v1/embeddings"))
  .middleware(ClientAuthorization)
{}
