import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { Registry } from "../../registry/Registry.js"
import { RelayApi } from "../Api.js"
import { requireRole } from "../Auth.js"

export const RegistryLive = HttpApiBuilder.group(RelayApi, "registry", (handlers) =>
  Effect.gen(function* () {
    const registry = yield* Registry
    const admin = requireRole()
    return handlers
      .handle("list", () => Effect.map(registry.list, (data) => ({ data })))
      .handle("create", ({ payload }) => Effect.zipRight(admin, registry.createPublic(payload)))
      .handle("delete", ({ path }) => Effect.zipRight(admin, registry.deleteByName(path.name)))
  }))
