/** Reading an OpenAI chat SSE answer in tests that care how a stream ended, not what it said. */
import { parseSse } from '../../src/node/engines/openai-http.js'

/** What a streamed chat answer delivered: content chunks, whether `[DONE]` came, error events, a read failure. */
export interface ChatStreamOutcome { chunks: number, done: boolean, errors: unknown[], threw: unknown }

/**
 * Reads an SSE chat stream to its end without throwing: a cut connection lands in `threw`, an
 * error event in `errors`. `onChunk` sees the running count of content chunks (to act mid-stream).
 */
export async function readChatStream (res: Response, onChunk?: (n: number) => void): Promise<ChatStreamOutcome> {
  const out: ChatStreamOutcome = { chunks: 0, done: false, errors: [], threw: undefined }
  try {
    for await (const event of parseSse(res.body as unknown as AsyncIterable<Uint8Array>)) {
      if (event.data === '[DONE]') { out.done = true; continue }
      const json = JSON.parse(event.data)
      if (json.error != null) out.errors.push(json.error)
      else if (json.choices?.[0]?.delta?.content != null) { out.chunks++; onChunk?.(out.chunks) }
    }
  } catch (err) {
    out.threw = err
  }
  return out
}
