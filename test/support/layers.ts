import { Layer } from "effect"
import { InstanceId, RelayConfig } from "../../src/config.js"
import { Registry } from "../../src/registry/Registry.js"
import * as TestDatabase from "./TestDatabase.js"

/** Config with the documented defaults and a fixed instance id. */
export const ConfigTest = Layer.merge(RelayConfig.layerDefaults, Layer.succeed(InstanceId, "instance-test"))

/** A fresh migrated database plus the registry on it. */
export const RegistryTest = Registry.layer.pipe(Layer.provideMerge(Layer.merge(TestDatabase.layer, ConfigTest)))
