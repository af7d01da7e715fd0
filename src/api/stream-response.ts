import type { ServerResponse } from 'node:http'
import type { FastifyReply } from 'fastify'

/** A streamed answer written by hand: the raw response and a write that waits for drain. */
export interface StreamResponse {
  res: ServerResponse
  /** Writes `s`, waiting while the client's socket is full (back-pressure to the host node). */
  write: (s: string) => Promise<void>
}

/**
 * Takes over the reply for a streamed answer (OpenAI and Anthropic SSE, Ollama NDJSON): one set of
 * headers for all of them, flushed at once so a client sees the stream open before the first token.
 * `x-accel-buffering: no` keeps a proxy (nginx) from holding chunks back; `x-shepherd-host` names the
 * node that serves the request, as on non-streamed answers.
 */
export function openStream (reply: FastifyReply, contentType: 'text/event-stream' | 'application/x-ndjson' = 'text/event-stream'): StreamResponse {
  reply.hijack()
  const res = reply.raw
  res.writeHead(200, {
    'content-type': contentType,
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-shepherd-host': String(reply.getHeader('x-shepherd-host') ?? '')
  })
  res.flushHeaders()
  const write = async (s: string): Promise<void> => {
    if (!res.write(s)) await new Promise(resolve => res.once('drain', resolve))
  }
  return { res, write }
}
