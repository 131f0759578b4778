/**
 * llm-relay as a library: embed the broker in your own Effect app.
 *
 * ```ts
 * import * as Relay from "llm-relay"
 * const BrokerLive = Relay.layer.pipe(Layer.provide(Relay.RelayConfig.layer), Layer.provide(Relay.InstanceId.layer))
 * // needs a SqlClient (e.g. PgClient.layer({ url })); Relay.ApiLive serves the HttpApi groups.
 * ```
 */
export { layer, services, startup } from "./Broker.js"
export { defaults as relayDefaults, InstanceId, RelayConfig, type RelayConfigShape } from "./config.js"
export * as Database from "./db/Database.js"
export * as Embedded from "./db/Embedded.js"
export { migrate } from "./db/Migrator.js"
export * from "./domain/Errors.js"
export * from "./domain/Frames.js"
export * from "./domain/Llm.js"
export * from "./domain/Task.js"
export * from "./domain/Token.js"
export { RelayApi } from "./http/Api.js"
export { Authorization, CurrentPrincipal } from "./http/Auth.js"
export { ApiLive, HttpLive, NodeServerLive } from "./http/Server.js"
export * as PublisherConfig from "./publisher/Config.js"
export * as Publisher from "./publisher/Publisher.js"
export { Registry } from "./registry/Registry.js"
export { Sessions } from "./sessions/Sessions.js"
export { Signals } from "./signals/Signals.js"
export { Sweeper } from "./sweeper/Sweeper.js"
export { Relay } from "./tasks/Relay.js"
export { TaskQueue } from "./tasks/TaskQueue.js"
export { Tokens } from "./tokens/Tokens.js"
