/** `llm-relay migrate`: apply the SQL migrations and exit. */
import { Command } from "@effect/cli"
import { Effect, Layer } from "effect"
import * as Database from "../db/Database.js"
import { migrate as runMigrations } from "../db/Migrator.js"

export const migrate = Command.make("migrate", {}, () =>
  Effect.gen(function*() {
    const applied = yield* runMigrations()
    yield* Effect.sync(() =>
      console.log(
        applied.length === 0
          ? "migrations: up to date"
          : `migrations applied: ${applied.map((m) => `${String(m.id).padStart(4, "0")}_${m.name}`).join(", ")}`
      )
    )
  }).pipe(Effect.provide(Layer.orDie(Database.layerFromEnv)))).pipe(
    Command.withDescription("apply database migrations and exit")
  )
