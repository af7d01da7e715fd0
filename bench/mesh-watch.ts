/**
 * Watches an entry node while a load runs, to explain how its requests were spread: the peer
 * transitions it reports (`/api/events`), and, polled from `/api/models`, how long each replica
 * of a model was out of its routing table (not alive) or out of rotation (circuit breaker open)
 * or not loaded.
 */

export interface WatchTally {
  /** Peer transitions by type (`peer:suspect`, `peer:dead`, `peer:alive`, …), snapshots left out. */
  events: Map<string, number>
  /** Per host name: ms it was missing from the model's replicas, ms its breaker was open, ms not `loaded`. */
  out: Map<string, { missingMs: number, breakerMs: number, notLoadedMs: number }>
}

interface ModelsAnswer {
  models: Array<{ name: string, hosts: Array<{ peerId: string, state: string }> }>
  breakers: Record<string, { open: boolean }>
}

export class MeshWatch {
  private tally: WatchTally = { events: new Map(), out: new Map() }
  private readonly abort = new AbortController()
  private readonly poller: NodeJS.Timeout
  private polling = false
  private lastPoll = performance.now()

  /** `hosts`: peer id → short name, for the hosts expected to serve `model`. */
  constructor (private readonly api: string, private readonly model: () => string, private readonly hosts: Map<string, string>, pollMs = 250) {
    void this.listen()
    this.poller = setInterval(() => { void this.poll() }, pollMs)
  }

  /** What was seen since the last call, and starts a new tally. */
  take (): WatchTally {
    const t = this.tally
    this.tally = { events: new Map(), out: new Map() }
    return t
  }

  close (): void {
    clearInterval(this.poller)
    this.abort.abort()
  }

  private async listen (): Promise<void> {
    try {
      const res = await fetch(`${this.api}/api/events`, { signal: this.abort.signal })
      if (res.body == null) return
      let pending = ''
      for await (const piece of res.body.pipeThrough(new TextDecoderStream())) {
        pending += piece
        const lines = pending.split('\n')
        pending = lines.pop() ?? ''
        for (const line of lines) {
          if (!line.startsWith('event: peer:') || line === 'event: peer:snapshot') continue
          const type = line.slice('event: '.length)
          this.tally.events.set(type, (this.tally.events.get(type) ?? 0) + 1)
        }
      }
    } catch {
      // Closed by close(), or the node went away: either way nothing more to count.
    }
  }

  private async poll (): Promise<void> {
    if (this.polling) return
    this.polling = true
    try {
      const res = await fetch(`${this.api}/api/models`, { signal: AbortSignal.any([this.abort.signal, AbortSignal.timeout(2000)]) })
      const { models, breakers } = await res.json() as ModelsAnswer
      const now = performance.now()
      const dt = now - this.lastPoll
      this.lastPoll = now
      const replicas = models.find(m => m.name === this.model())?.hosts ?? []
      for (const [id, name] of this.hosts) {
        const entry = this.tally.out.get(name) ?? { missingMs: 0, breakerMs: 0, notLoadedMs: 0 }
        const replica = replicas.find(h => h.peerId === id)
        if (replica === undefined) entry.missingMs += dt
        else if (replica.state !== 'loaded') entry.notLoadedMs += dt
        if (breakers[id]?.open === true) entry.breakerMs += dt
        this.tally.out.set(name, entry)
      }
    } catch {
      // A slow answer under load is skipped, not counted.
    } finally {
      this.polling = false
    }
  }
}

/** A tally in a few words, e.g. `suspect×1 alive×1; B missing 2.1 s`; `—` when nothing happened. */
export function describeTally (t: WatchTally): string {
  const parts: string[] = []
  if (t.events.size > 0) parts.push([...t.events].map(([type, n]) => `${type.replace('peer:', '')}×${n}`).join(' '))
  for (const [name, o] of t.out) {
    const bits = [
      o.missingMs >= 250 ? `missing ${(o.missingMs / 1000).toFixed(1)} s` : '',
      o.breakerMs >= 250 ? `breaker open ${(o.breakerMs / 1000).toFixed(1)} s` : '',
      o.notLoadedMs >= 250 ? `not loaded ${(o.notLoadedMs / 1000).toFixed(1)} s` : ''
    ].filter(b => b !== '')
    if (bits.length > 0) parts.push(`${name} ${bits.join(', ')}`)
  }
  return parts.length === 0 ? '—' : parts.join('; ')
}
