import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { Registry } from "../../registry/Registry.js"
import { RelayApi } from "../Api.js"

export const RegistryLive = HttpApiBuilder.group(RelayApi, "registry", (handlers) =>
  Effect.gen(function*() {
    const registry = yield* Registry
    return handlers
      .handle("list", () => Effect.map(registry.list, (data) => ({ data })))
      .handle("create", ({ payload }) => registry.createPublic(payload))
      .handle("delete", ({ path }) => registry.deleteByName(path.name))
  }))
