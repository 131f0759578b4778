/**
 * The broker's HTTP API (PROTOCOL.md), one group per route family. A host app
 * can serve it as a whole (`src/http/Server.ts`) or add its groups to its own.
 */
import { HttpApi, OpenApi } from "@effect/platform"
import * as Errors from "../domain/Errors.js"
import * as Llm from "../domain/Llm.js"
import * as Task from "../domain/Task.js"
import { asWire, decodeErrorAsBadRequest } from "./Errors.js"
import { OpenAiApi } from "./groups/openai.js"
import { OpsApi } from "./groups/ops.js"
import { PublishersApi } from "./groups/publishers.js"
import { RegistryApi } from "./groups/registry.js"
import { TasksApi } from "./groups/tasks.js"
import { TokensApi } from "./groups/tokens.js"

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
