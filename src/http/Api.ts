/**
 * The broker's HTTP API (PROTOCOL.md), one group per route family. A host app
 * can serve it as a whole (`src/http/Server.ts`) or add its groups to its own.
 */
import { HttpApi, OpenApi } from "@effect/platform"
import { Predicate } from "effect"
import * as Errors from "../domain/Errors.js"
import * as Llm from "../domain/Llm.js"
import * as Task from "../domain/Task.js"
import { asWire } from "./Errors.js"
import { OpenAiApi } from "./groups/openai.js"
import { OpsApi } from "./groups/ops.js"
import { PublishersApi } from "./groups/publishers.js"
import { RegistryApi } from "./groups/registry.js"
import { TasksApi } from "./groups/tasks.js"
import { TokensApi } from "./groups/tokens.js"

/**
 * The OpenAPI document, rewritten where HttpApi's built-in decode error shows:
 * on the wire that failure is a BadRequest (see `toWire` in Errors.ts), so the
 * document names BadRequest's shape instead of the decode error's
 * `{_tag, issues}`, and drops the component schemas only the decode error used.
 */
const decodeErrorAsBadRequest = (spec: Record<string, unknown>): Record<string, unknown> => {
  const ref = (name: string) => `#/components/schemas/${name}`
  const rewrite = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(rewrite)
    if (!Predicate.isRecord(node)) return node
    if (node.$ref === ref("HttpApiDecodeError")) return { $ref: ref("BadRequest") }
    const out = Object.fromEntries(Object.entries(node).map(([key, value]): [string, unknown] => [key, rewrite(value)]))
    if (Array.isArray(out.anyOf)) {
      const anyOf = [...new Map(out.anyOf.map((member: unknown) => [JSON.stringify(member), member])).values()]
      if (anyOf.length === 1 && Object.keys(out).length === 1) return anyOf[0]
      out.anyOf = anyOf
    }
    return out
  }
  const { components, ...rest } = spec
  if (!Predicate.isRecord(components) || !Predicate.isRecord(components.schemas)) return spec
  const paths = rewrite(rest)
  const schemas = new Map(Object.entries(components.schemas).map(([name, schema]) => [name, rewrite(schema)]))
  // the decode error, then what nothing refers to any more (its Issue, …)
  const isReferenced = (name: string) =>
    JSON.stringify([paths, ...[...schemas].filter(([other]) => other !== name)]).includes(`"${ref(name)}"`)
  for (let orphan: string | undefined = "HttpApiDecodeError"; orphan !== undefined;) {
    schemas.delete(orphan)
    orphan = [...schemas.keys()].find((name) => !isReferenced(name))
  }
  return {
    ...(Predicate.isRecord(paths) ? paths : rest),
    components: { ...components, schemas: Object.fromEntries(schemas) }
  }
}

export class RelayApi extends HttpApi.make("llm-relay")
  .add(OpsApi)
  .add(PublishersApi)
  .add(OpenAiApi)
  .add(TasksApi)
  .add(RegistryApi)
  .add(TokensApi)
  .addError(asWire(Errors.BadRequest))
  .addError(asWire(Errors.NotFound))
  .addError(asWire(Errors.PayloadTooLarge))
  .addError(asWire(Errors.RateLimited))
  .addError(asWire(Llm.NameConflict))
  .addError(asWire(Llm.LlmNotFound))
  .addError(asWire(Llm.SessionNotFound))
  .addError(asWire(Task.ModelNotFound))
  .addError(asWire(Task.NotVirtual))
  .addError(asWire(Task.TaskNotFound))
  .addError(asWire(Task.TaskNotHeld))
  .addError(asWire(Task.TaskCancelled))
  .addError(asWire(Task.PublisherOffline))
  .addError(asWire(Task.PublisherDisconnected))
  .addError(asWire(Task.Timeout))
  .addError(asWire(Task.UpstreamError, 502))
  .annotate(OpenApi.Transform, decodeErrorAsBadRequest)
{}
