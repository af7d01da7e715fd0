/**
 * A minimal OpenAI-compatible server for measuring relay delay: a streamed chat answer is
 * `tokens` chunks sent every `intervalMs`, and each chunk's content is the `performance.now()`
 * at which it was written. Run in the bench's own process, the client reads that clock too, so
 * arrival minus emission is the delay every chunk took through whatever path it was relayed by.
 */
import { createServer, type Server } from 'node:http'
import type { Socket } from 'node:net'

export const CLOCKED_MODEL = 'clocked-chat'

export interface ClockedUpstreamOptions {
  /** Time between chunks (ms). Default 10. */
  intervalMs?: number
}

export class ClockedUpstream {
  private readonly sockets = new Set<Socket>()
  readonly intervalMs: number

  private constructor (private readonly server: Server, private readonly port: number, intervalMs: number) {
    this.intervalMs = intervalMs
    server.on('connection', socket => {
      this.sockets.add(socket)
      socket.once('close', () => { this.sockets.delete(socket) })
    })
  }

  static async start (options: ClockedUpstreamOptions = {}): Promise<ClockedUpstream> {
    const intervalMs = options.intervalMs ?? 10
    const server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        if (req.method === 'GET' && req.url === '/v1/models') {
          res.writeHead(200, { 'content-type': 'application/json' })
          res.end(JSON.stringify({ object: 'list', data: [{ id: CLOCKED_MODEL, object: 'model', created: 0, owned_by: 'bench' }] }))
          return
        }
        if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
          res.writeHead(404, { 'content-type': 'application/json' })
          res.end(JSON.stringify({ error: { message: 'not found', type: 'invalid_request_error', param: null, code: 'unknown_url' } }))
          return
        }
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { max_tokens?: number, stream?: boolean }
        const tokens = body.max_tokens ?? 16
        const head = { id: 'chatcmpl-clocked', created: 0, model: CLOCKED_MODEL }
        if (body.stream !== true) {
          res.writeHead(200, { 'content-type': 'application/json' })
          res.end(JSON.stringify({
            ...head,
            object: 'chat.completion',
            choices: [{ index: 0, message: { role: 'assistant', content: 'x'.repeat(tokens) }, finish_reason: 'length' }],
            usage: { prompt_tokens: 1, completion_tokens: tokens, total_tokens: tokens + 1 }
          }))
          return
        }
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
        const chunk = (content: string | undefined, finish: string | null): string =>
          `data: ${JSON.stringify({ ...head, object: 'chat.completion.chunk', choices: [{ index: 0, delta: content === undefined ? {} : { content }, finish_reason: finish }] })}\n\n`
        let sent = 0
        const tick = (): void => {
          if (res.destroyed) return
          if (sent === tokens) {
            res.end(chunk(undefined, 'length') + 'data: [DONE]\n\n')
            return
          }
          sent++
          res.write(chunk(performance.now().toFixed(3), null))
          setTimeout(tick, intervalMs)
        }
        tick()
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => { resolve() })
    })
    const address = server.address()
    return new ClockedUpstream(server, typeof address === 'object' && address !== null ? address.port : 0, intervalMs)
  }

  /** The OpenAI base URL, e.g. `http://127.0.0.1:41234/v1`. */
  get url (): string {
    return `http://127.0.0.1:${this.port}/v1`
  }

  async close (): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>(resolve => { this.server.close(() => { resolve() }) })
  }
}
