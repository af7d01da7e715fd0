import type { ServerResponse } from 'node:http'
import type { FastifyReply } from 'fastify'

/** A streamed answer written by hand: the raw response and a write that waits for drain. */
export interface StreamResponse {
  res: ServerResponse
  /** Writes `s`, waiting while the client's socket is full (back-pressure to the host node). */
  write: (s: string) => Promise<void>
}

/** Streams open now, with their framing: a node that stops ends each with an error event. */
const openStreams = new Map<ServerResponse, 'text/event-stream' | 'application/x-ndjson'>()

/**
 * Ends every open stream with an error event (a stopping node, `code` e.g. `node_stopping`), so a
 * client sees why its answer stops instead of a cut it cannot tell from a finished answer. SSE
 * gets `event: error` with a body every SDK here reads (OpenAI's `error` object, Anthropic's and
 * the Responses API's `type: "error"`); NDJSON (Ollama) gets `{"error": ...}`. Whatever the route
 * still writes afterwards is dropped. Returns how many streams were ended.
 */
export function failOpenStreams (message: string, code = 'node_stopping'): number {
  let n = 0
  for (const [res, kind] of openStreams) {
    openStreams.delete(res)
    if (res.writableEnded || res.destroyed) continue
    const body = kind === 'application/x-ndjson'
      ? `${JSON.stringify({ error: message })}\n`
      : `event: error\ndata: ${JSON.stringify({ type: 'error', error: { message, type: 'server_error', param: null, code }, code, message })}\n\n`
    res.end(body)
    res.write = (() => true) as typeof res.write
    res.end = (() => res) as typeof res.end
    n++
  }
  return n
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
    'x-shepherd-host': String(reply.getHeader('x-shepherd-host') ?? ''),
    // The request id the route chose (src/api/inference-call.ts), as non-streamed answers carry it.
    ...(typeof reply.getHeader('x-request-id') === 'string' ? { 'x-request-id': String(reply.getHeader('x-request-id')) } : {})
  })
  res.flushHeaders()
  openStreams.set(res, contentType)
  res.once('close', () => { openStreams.delete(res) })
  const write = async (s: string): Promise<void> => {
    if (!res.write(s)) await new Promise(resolve => res.once('drain', resolve))
  }
  return { res, write }
}
