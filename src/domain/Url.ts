/**
 * Where a task goes upstream. An upstream's base is an OpenAI base URL as the
 * `openai` SDK takes it (ending in `/v1`); a task's path is a route
 * (`/v1/chat/completions`). Joined, the `/v1` is not repeated
 * (PROTOCOL.md): the publisher and the broker's public proxy both use this.
 */

/** `http://h:8000/v1` + `/v1/chat/completions` → `http://h:8000/v1/chat/completions`. */
export const joinUpstream = (base: string, path: string): string => {
  const trimmed = base.replace(/\/+$/, "")
  return trimmed.endsWith("/v1") && path.startsWith("/v1/") ? `${trimmed}${path.slice(3)}` : `${trimmed}${path}`
}
