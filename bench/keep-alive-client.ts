/**
 * The benches' HTTP client: node:http over a keep-alive agent, so connection setup is paid once
 * per socket rather than per request and the timings are the server's, not the handshake's.
 * Streams are read as Server-Sent Events with each event's arrival time.
 */
import http from 'node:http'

export interface JsonAnswer {
  status: number
  /** The `x-shepherd-host` header: the peer that served the request. */
  host: string | undefined
  body: string
  ms: number
}

export interface SseEvent {
  /** ms since the request was sent, taken when the bytes carrying the event were read. */
  at: number
  /** The event's `data:` payload. */
  data: string
}

export interface StreamAnswer {
  /** `performance.now()` when the request was sent: `startedAt + event.at` is an event's arrival on this process's clock. */
  startedAt: number
  status: number
  host: string | undefined
  /** Every event, `[DONE]` included; for a non-200 answer, empty (the body is in `errorBody`). */
  events: SseEvent[]
  /** ms until the last byte. */
  ms: number
  errorBody?: string
}

export class KeepAliveClient {
  private readonly agent: http.Agent

  /** `maxSockets`: at least the concurrency the client is driven at, so no request waits for a socket. */
  constructor (maxSockets: number) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets })
  }

  /** POSTs JSON and reads the whole answer. */
  async post (url: string, body: unknown): Promise<JsonAnswer> {
    const t0 = performance.now()
    const res = await this.send(url, body)
    const chunks: Buffer[] = []
    for await (const chunk of res) chunks.push(chunk as Buffer)
    return { status: res.statusCode ?? 0, host: header(res, 'x-shepherd-host'), body: Buffer.concat(chunks).toString('utf8'), ms: performance.now() - t0 }
  }

  /** POSTs JSON and reads the answer as SSE, timing every event. */
  async stream (url: string, body: unknown): Promise<StreamAnswer> {
    const t0 = performance.now()
    const res = await this.send(url, body)
    const status = res.statusCode ?? 0
    const host = header(res, 'x-shepherd-host')
    if (status !== 200) {
      const chunks: Buffer[] = []
      for await (const chunk of res) chunks.push(chunk as Buffer)
      return { startedAt: t0, status, host, events: [], ms: performance.now() - t0, errorBody: Buffer.concat(chunks).toString('utf8') }
    }
    const events: SseEvent[] = []
    let pending = ''
    res.setEncoding('utf8')
    for await (const piece of res) {
      const at = performance.now() - t0
      pending += piece as string
      let end: number
      while ((end = pending.indexOf('\n\n')) >= 0) {
        const block = pending.slice(0, end)
        pending = pending.slice(end + 2)
        for (const line of block.split('\n')) {
          if (line.startsWith('data: ')) events.push({ at, data: line.slice(6) })
        }
      }
    }
    return { startedAt: t0, status, host, events, ms: performance.now() - t0 }
  }

  close (): void {
    this.agent.destroy()
  }

  private async send (url: string, body: unknown): Promise<http.IncomingMessage> {
    const payload = Buffer.from(JSON.stringify(body))
    return await new Promise((resolve, reject) => {
      const req = http.request(url, {
        method: 'POST',
        agent: this.agent,
        headers: { 'content-type': 'application/json', 'content-length': payload.byteLength }
      }, resolve)
      req.once('error', reject)
      req.end(payload)
    })
  }
}

function header (res: http.IncomingMessage, name: string): string | undefined {
  const v = res.headers[name]
  return Array.isArray(v) ? v[0] : v
}
