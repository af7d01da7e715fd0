import { mdns } from '@libp2p/mdns'
import { peerDiscoverySymbol, serviceCapabilities, type ComponentLogger, type PeerDiscovery, type PeerDiscoveryEvents, type PeerId, type PeerInfo, type Startable } from '@libp2p/interface'
import { TypedEventEmitter } from 'main-event'
import { MDNS_SERVICE_TAG } from './constants.js'

/** The longest `setInterval` delay Node accepts: the inner service's own timer never fires. */
const NEVER_MS = 2 ** 31 - 1

export interface LanDiscoveryOptions {
  /** Query interval while this node is connected to no peer. */
  intervalMs: number
  /** Longest interval between queries once connected: the interval doubles up to it. */
  maxIntervalMs: number
  /** Counters to keep up to date (for the metrics). */
  stats?: LanDiscoveryStats
}

/** Queries sent, and peers found by answers: passed on to libp2p, or dropped as already connected. */
export interface LanDiscoveryStats { queries: number, announced: number, suppressed: number }

/** What `@libp2p/mdns` returns (typed there as a bare PeerDiscovery): the service and its socket. */
type MdnsService = PeerDiscovery & Startable & {
  isStarted: () => boolean
  mdns?: { query: (q: { questions: Array<{ name: string, type: 'PTR' }> }) => void }
}

interface LanDiscoveryComponents {
  logger: ComponentLogger
  addressManager: unknown
  connectionManager: { getConnections: (peer?: PeerId) => unknown[] }
}

/**
 * When the next query goes out: every `intervalMs` while alone, else twice the last interval, up
 * to `maxIntervalMs` (RFC 6762 §5.2: successive queries back off by at least a factor of two).
 * Every node answers every query to the whole LAN, so a query costs N answers and N² packets a
 * round: at 10 nodes, querying every second made mDNS half of a node's idle CPU.
 */
export function nextQueryDelay (lastMs: number, alone: boolean, opts: LanDiscoveryOptions): number {
  if (alone) return opts.intervalMs
  return Math.min(opts.maxIntervalMs, Math.max(opts.intervalMs, lastMs * 2))
}

/**
 * mDNS discovery (`@libp2p/mdns`, our service tag) paced by this node's state, and quiet about
 * peers it is connected to already: an answer from a connected peer would only make libp2p
 * rewrite its peer store entry. A new node still finds everyone at once (its first query goes
 * out at start, and each answer reaches the whole LAN), and the others learn of it from its dials.
 */
export class LanDiscovery extends TypedEventEmitter<PeerDiscoveryEvents> implements PeerDiscovery, Startable {
  readonly [peerDiscoverySymbol] = this
  readonly [Symbol.toStringTag] = 'shepherd-mesh/lan-discovery'
  readonly [serviceCapabilities] = ['@libp2p/peer-discovery']
  private readonly inner: MdnsService
  private timer?: NodeJS.Timeout
  private lastMs = 0
  readonly stats: LanDiscoveryStats

  constructor (private readonly components: LanDiscoveryComponents, private readonly opts: LanDiscoveryOptions) {
    super()
    this.stats = opts.stats ?? { queries: 0, announced: 0, suppressed: 0 }
    this.inner = mdns({ interval: NEVER_MS, serviceTag: MDNS_SERVICE_TAG })(components as any) as MdnsService
    this.inner.addEventListener('peer', evt => { this.onPeer(evt.detail) })
  }

  isStarted (): boolean {
    return this.inner.isStarted()
  }

  async start (): Promise<void> {
    // The inner service sends the first query itself, at once.
    await this.inner.start()
    this.stats.queries++
    this.schedule()
  }

  async stop (): Promise<void> {
    clearTimeout(this.timer)
    this.timer = undefined
    await this.inner.stop()
  }

  private alone (): boolean {
    return this.components.connectionManager.getConnections().length === 0
  }

  private schedule (): void {
    this.lastMs = nextQueryDelay(this.lastMs, this.alone(), this.opts)
    this.timer = setTimeout(() => {
      this.query()
      this.schedule()
    }, this.lastMs)
    this.timer.unref()
  }

  private query (): void {
    this.inner.mdns?.query({ questions: [{ name: MDNS_SERVICE_TAG, type: 'PTR' }] })
    this.stats.queries++
  }

  private onPeer (peer: PeerInfo): void {
    if (this.components.connectionManager.getConnections(peer.id).length > 0) {
      this.stats.suppressed++
      return
    }
    this.stats.announced++
    this.dispatchEvent(new CustomEvent('peer', { detail: peer }))
  }
}

/** The libp2p `peerDiscovery` entry for a LAN node. */
export function lanDiscovery (opts: LanDiscoveryOptions): (components: any) => LanDiscovery {
  return (components: LanDiscoveryComponents) => new LanDiscovery(components, opts)
}
