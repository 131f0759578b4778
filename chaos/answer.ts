/**
 * What every call asks and what its answer must be. The prompt carries a
 * directive (the call's nonce, how many chunks, how slowly, whether the
 * upstream should fail); the fake upstreams and the raw publishers answer
 * from it alone, so the expected answer of any request — a client's or a row
 * in the database — is a pure function of its body.
 */
export interface Directive {
  /** The call's nonce: unique in the run. */
  readonly n: string
  /** Chunks of the answer (each is `echo:<n>:`). */
  readonly k: number
  /** ms between chunks. */
  readonly d: number
  /** ms before the first byte. */
  readonly w: number
  /** Injected upstream failure: answer this status (500 or 429) instead; 0: none. */
  readonly f: number
}

const PREFIX = "chaos "

export const prompt = (directive: Directive): string => `${PREFIX}${JSON.stringify(directive)}`

/** The directive in a chat request body (its last message), or undefined. */
export const directiveOf = (body: unknown): Directive | undefined => {
  const messages = (body as { messages?: unknown } | null)?.messages
  if (!Array.isArray(messages) || messages.length === 0) return undefined
  const content = (messages[messages.length - 1] as { content?: unknown }).content
  if (typeof content !== "string" || !content.startsWith(PREFIX)) return undefined
  try {
    return JSON.parse(content.slice(PREFIX.length)) as Directive
  } catch {
    return undefined
  }
}

export const piece = (directive: Directive): string => `echo:${directive.n}:`
export const expectedText = (directive: Directive): string => piece(directive).repeat(directive.k)

/** The marker in an injected upstream error's message: its pass-through is not the broker's 500. */
export const injectedMessage = (directive: Directive) => `chaos injected ${directive.f} for ${directive.n}`

/** An upstream error body the way vLLM (recent versions) writes one. */
export const injectedBody = (directive: Directive) => ({
  error: { message: injectedMessage(directive), type: "chaos_injected", param: null, code: directive.f }
})

const created = 1_700_000_000

/** A whole chat completion, vLLM's shape. */
export const completion = (id: string, model: string, directive: Directive) => ({
  id,
  object: "chat.completion",
  created,
  model,
  choices: [{
    index: 0,
    message: { role: "assistant", content: expectedText(directive), tool_calls: [] },
    logprobs: null,
    finish_reason: "stop",
    stop_reason: null
  }],
  usage: { prompt_tokens: 12, total_tokens: 12 + directive.k, completion_tokens: directive.k },
  prompt_logprobs: null
})

/** One stream chunk (JSON text), vLLM's shape. */
export const streamChunk = (
  id: string,
  model: string,
  delta: Record<string, unknown>,
  finish: string | null = null
): string =>
  JSON.stringify({
    id,
    object: "chat.completion.chunk",
    created,
    model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }]
  })

export const usageChunk = (id: string, model: string, directive: Directive): string =>
  JSON.stringify({
    id,
    object: "chat.completion.chunk",
    created,
    model,
    choices: [],
    usage: { prompt_tokens: 12, total_tokens: 12 + directive.k, completion_tokens: directive.k }
  })

/** The content of the chunks of a stream, in order (role and usage chunks add nothing). */
export const contentOfChunks = (chunks: ReadonlyArray<string>): string => {
  let text = ""
  for (const chunk of chunks) {
    try {
      const parsed = JSON.parse(chunk) as { choices?: Array<{ delta?: { content?: unknown } }> }
      const content = parsed.choices?.[0]?.delta?.content
      if (typeof content === "string") text += content
    } catch {
      text += "<unparsable chunk>"
    }
  }
  return text
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
