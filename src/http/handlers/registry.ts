import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { Registry } from "../../registry/Registry.js"
import { RelayApi } from "../Api.js"
import { CurrentPrincipal } from "../Auth.js"

export const RegistryLive = HttpApiBuilder.group(RelayApi, "registry", (handlers) =>
  Effect.gen(function*() {
    const registry = yield* Registry
    return handlers
      .handle("list", ({ urlParams }) =>
        Effect.flatMap(CurrentPrincipal, (principal) =>
          registry.page(principal, {
            limit: urlParams.limit,
            cursor: urlParams.cursor
          })))
      .handle("pools", () => Effect.map(registry.pools, (data) => ({ data })))
      .handle("sharePool", ({ path, payload }) => registry.sharePool(path.name, payload.shared))
      .handle("create", ({ payload }) => registry.createPublic(payload))
      .handle("delete", ({ path }) => registry.deleteByName(path.name))
  }))
