/**
 * The broker's HTTP API (PROTOCOL.md), one group per route family. A host app
 * can serve it as a whole (`src/http/Server.ts`) or add its groups to its own.
 */
import { HttpApi } from "@effect/platform"
import * as Errors from "../domain/Errors.js"
import * as Llm from "../domain/Llm.js"
import * as Task from "../domain/Task.js"
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
  .addError(Errors.BadRequest)
  .addError(Errors.Unauthorized)
  .addError(Errors.Forbidden)
  .addError(Errors.NotFound)
  .addError(Errors.PayloadTooLarge)
  .addError(Errors.NotImplemented)
  .addError(Llm.NameConflict)
  .addError(Llm.LlmNotFound)
  .addError(Llm.SessionNotFound)
  .addError(Task.ModelNotFound)
  .addError(Task.NotVirtual)
  .addError(Task.TaskNotFound)
  .addError(Task.TaskNotHeld)
  .addError(Task.TaskCancelled)
  .addError(Task.PublisherOffline)
  .addError(Task.PublisherDisconnected)
  .addError(Task.Timeout)
  .addError(Task.UpstreamError, { status: 502 })
{}
