// ESLint 9 flat config. Formatting is the `@effect/dprint` rule with the
// options Effect's own repositories use (`npm run lint -- --fix` applies it);
// the rest is a small set of correctness rules on top of the recommended sets.
import * as effectEslint from "@effect/eslint-plugin"
import js from "@eslint/js"
import { defineConfig } from "eslint/config"
import tseslint from "typescript-eslint"

export default defineConfig(
  {
    ignores: ["**/dist/**", "**/node_modules/**", "bench/results/**", ".llm-relay/**"]
  },
  js.configs.recommended,
  tseslint.configs.recommended,
  // turns off the core stylistic rules that would fight the formatter, and
  // turns on @effect/dprint
  effectEslint.configs.dprint,
  {
    files: ["**/*.ts", "**/*.js"],
    languageOptions: {
      parser: tseslint.parser,
      ecmaVersion: 2022,
      sourceType: "module"
    },
    rules: {
      "@effect/dprint": ["error", {
        config: {
          indentWidth: 2,
          lineWidth: 120,
          semiColons: "asi",
          quoteStyle: "alwaysDouble",
          trailingCommas: "never",
          operatorPosition: "maintain",
          "arrowFunction.useParentheses": "force"
        }
      }],
      // tsc's noUnusedLocals/noUnusedParameters catch these too; the lint
      // says so in the editor and allows `_name` for a deliberate unused
      "@typescript-eslint/no-unused-vars": ["error", {
        argsIgnorePattern: "^_",
        varsIgnorePattern: "^_",
        caughtErrorsIgnorePattern: "^_"
      }],
      // STYLE.md: no `any`
      "@typescript-eslint/no-explicit-any": "error",
      // the code writes Array<A> / ReadonlyArray<A>, as Effect does
      "@typescript-eslint/array-type": ["error", { default: "generic", readonly: "generic" }],
      "object-shorthand": "error"
    }
  }
)
