import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { Llm } from "../../domain/Llm.js"
import { Registry } from "../../registry/Registry.js"
import { RelayApi } from "../Api.js"
import { CurrentPrincipal } from "../Auth.js"

export const RegistryLive = HttpApiBuilder.group(RelayApi, "registry", (handlers) =>
  Effect.gen(function*() {
    const registry = yield* Registry
    return handlers
      // which session serves a row is the publishers' business, not a client's
      .handle("list", () =>
        Effect.gen(function*() {
          const principal = yield* CurrentPrincipal
          const data = yield* registry.list
          return {
            data: principal.role === "client"
              ? data.map((llm) => new Llm({ ...llm, providerSessionId: null }, true))
              : data
          }
        }))
      .handle("create", ({ payload }) => registry.createPublic(payload))
      .handle("delete", ({ path }) => registry.deleteByName(path.name))
  }))
