/**
 * The broker's HTTP server: the RelayApi with its handlers, the error and
 * body-limit middleware, OpenAPI at /openapi.json and docs at /docs.
 */
import {
  HttpApiBuilder,
  HttpApiScalar,
  HttpIncomingMessage,
  HttpMiddleware,
  HttpRouter,
  HttpServer,
  HttpServerRequest
} from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer, Option } from "effect"
import { createServer, IncomingMessage } from "node:http"
import { RelayConfig } from "../config.js"
import { BadRequest, PayloadTooLarge } from "../domain/Errors.js"
import { RelayApi } from "./Api.js"
import { AuthorizationLive } from "./Auth.js"
import { domainErrorResponse, errorMiddleware } from "./Errors.js"
import { OpenAiLive } from "./handlers/openai.js"
import { OpsLive } from "./handlers/ops.js"
import { PublishersLive } from "./handlers/publishers.js"
import { RegistryLive } from "./handlers/registry.js"
import { TasksLive } from "./handlers/tasks.js"
import { TokensLive } from "./handlers/tokens.js"

/**
 * Bodies over the limit get 413: at once when Content-Length says so (the
 * body is never read), else when reading passes the limit.
 */
const bodyLimit = HttpApiBuilder.middleware(
  Effect.map(RelayConfig, (config) => (app) =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      // every body this API takes is JSON: a form would otherwise be decoded into the payload
      const type = (request.headers["content-type"] ?? "").toLowerCase()
      if (type.startsWith("multipart/") || type.startsWith("application/x-www-form-urlencoded")) {
        return domainErrorResponse(
          new BadRequest({ message: "the body must be JSON (Content-Type: application/json), not a form" })
        )
      }
      const length = Number(request.headers["content-length"] ?? "0")
      if (Number.isFinite(length) && length > config.maxBodyBytes) {
        return domainErrorResponse(
          new PayloadTooLarge({ message: `the request body is over the limit of ${config.maxBodyBytes} bytes` })
        )
      }
      if (request.headers["content-length"] === undefined) lingerPastLimit(request, config.maxBodyBytes)
      return yield* HttpIncomingMessage.withMaxBodySize(app, Option.some(config.maxBodyBytes))
    }))
)

/**
 * A chunked body (no Content-Length) is only known to be too large once
 * reading passes the limit. The HTTP layer then destroys the request, and
 * with it the socket: the client, still sending, got a reset instead of its
 * 413. Here that destroy of an incomplete request drains the rest instead
 * (discarded; at most 4× the limit, or 10 s), so the 413 reaches the client.
 * A request read whole is destroyed as before.
 */
const lingerPastLimit = (request: HttpServerRequest.HttpServerRequest, limit: number) => {
  const source: unknown = request.source
  if (!(source instanceof IncomingMessage)) return
  const destroy = source.destroy.bind(source)
  source.destroy = ((error?: Error) => {
    if (source.complete || source.socket === null || source.socket.destroyed) return destroy(error)
    let drained = 0
    source.removeAllListeners("data")
    source.on("data", (chunk: Buffer | string) => {
      drained += chunk.length
      if (drained > 4 * limit) destroy()
    })
    source.resume()
    setTimeout(() => {
      if (!source.complete) destroy()
    }, 10_000).unref()
    return source
  }) as typeof source.destroy
}

const errors = HttpApiBuilder.middleware(Effect.succeed(errorMiddleware))

/** The API with every group's handlers; needs the broker's services. */
export const ApiLive = HttpApiBuilder.api(RelayApi).pipe(
  Layer.provide([OpsLive, TokensLive, RegistryLive, PublishersLive, OpenAiLive, TasksLive]),
  Layer.provide(AuthorizationLive)
)

/** Serve the API (plus /openapi.json and /docs) on whatever HttpServer is provided. */
export const HttpLive = HttpApiBuilder.serve(HttpMiddleware.withLoggerDisabled).pipe(
  Layer.provide(HttpApiScalar.layer({ path: "/docs" })),
  // path parameters hold names and session ids of up to 128 characters (the
  // router's default cut-off is 100), percent-encoded they may be longer
  Layer.provide(HttpRouter.setRouterConfig({ maxParamLength: 512 })),
  Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
  Layer.provide(errors),
  Layer.provide(bodyLimit),
  Layer.provide(ApiLive),
  HttpServer.withLogAddress
)

/**
 * A Node HTTP server on host:port. By the time the server closes, every
 * handler fiber has been interrupted; open streams (publisher task streams,
 * SSE answers) are then cut so `close` does not wait for their clients.
 */
export const NodeServerLive = (options: { readonly host: string; readonly port: number }) =>
  NodeHttpServer.layer(() => {
    const server = createServer()
    server.keepAliveTimeout = 5_000
    const close = server.close.bind(server)
    server.close = (callback) => {
      close(callback)
      server.closeAllConnections()
      return server
    }
    return server
  }, options)
