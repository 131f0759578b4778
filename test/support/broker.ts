/**
 * A real broker for end-to-end tests: its own database on the run's server,
 * the real HTTP server on a random loopback port, the live clock.
 */
import { HttpServer } from "@effect/platform"
import { ConfigProvider, Context, Effect, Exit, Layer, ManagedRuntime, Scope } from "effect"
import * as Crypto from "node:crypto"
import OpenAI from "openai"
import { appLayer } from "../../src/cli/serve.js"
import { InstanceId, RelayConfig, type RelayConfigShape } from "../../src/config.js"
import type { Role } from "../../src/domain/Token.js"
import { Tokens } from "../../src/tokens/Tokens.js"
import * as TestDatabase from "./TestDatabase.js"

export interface TestBroker {
  readonly url: string
  readonly adminToken: string
  /** A new token of that role (each is its own principal). */
  readonly token: (role: Role, name?: string) => Promise<string>
  readonly openai: (token: string, options?: { readonly maxRetries?: number }) => OpenAI
  readonly run: <A, E>(effect: Effect.Effect<A, E, Tokens>) => Promise<A>
  readonly close: () => Promise<void>
}

export const startBroker = async (overrides: Partial<RelayConfigShape> = {}): Promise<TestBroker> => {
  const adminToken = `admin-${Crypto.randomBytes(24).toString("hex")}`
  const layer = appLayer({ host: "127.0.0.1", port: 0 }).pipe(
    Layer.provideMerge(TestDatabase.layer),
    Layer.provide(
      Layer.merge(RelayConfig.layerWith(overrides), Layer.succeed(InstanceId, `instance-${Crypto.randomUUID()}`))
    ),
    Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["RELAY_ADMIN_TOKEN", adminToken]]))))
  )
  const runtime = ManagedRuntime.make(layer)
  const context = await runtime.runtime().then((rt) => rt.context)
  const address = Context.get(context, HttpServer.HttpServer).address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  const url = `http://127.0.0.1:${address.port}`
  const run = <A, E>(effect: Effect.Effect<A, E, Tokens>) => runtime.runPromise(effect)
  return {
    url,
    adminToken,
    run,
    token: (role, name = `${role}-${Crypto.randomBytes(3).toString("hex")}`) =>
      run(Effect.flatMap(Tokens, (t) => t.create({ role, name })).pipe(Effect.map((c) => c.token))),
    openai: (token, options) =>
      new OpenAI({ apiKey: token, baseURL: `${url}/v1`, maxRetries: options?.maxRetries ?? 0, timeout: 30_000 }),
    close: () => runtime.dispose()
  }
}

/** Exit/scope helpers re-exported for tests that need them. */
export { Effect, Exit, Scope }
