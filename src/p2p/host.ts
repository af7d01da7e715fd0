import '../polyfill.js'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { mdns } from '@libp2p/mdns'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p, type Libp2p } from 'libp2p'
import type { PrivateKey, PeerDiscovery } from '@libp2p/interface'
import { MAX_GOSSIP_FRAME_BYTES, MDNS_SERVICE_TAG } from './constants.js'

export interface HostOptions {
  privateKey: PrivateKey
  listen: string[]
  mdns: boolean
  mdnsIntervalMs: number
}

export type Host = Libp2p<{ identify: ReturnType<ReturnType<typeof identify>>, ping: ReturnType<ReturnType<typeof ping>>, pubsub: ReturnType<ReturnType<typeof gossipsub>> }>

/**
 * The libp2p host: tcp + noise + yamux, identify, ping, gossipsub (StrictSign) and, on a LAN, mDNS.
 * Dials are left to the mesh (no autodial), so every connection attempt is ours to time and count.
 */
export async function createHost (opts: HostOptions): Promise<Host> {
  const peerDiscovery: Array<(components: any) => PeerDiscovery> = []
  if (opts.mdns) peerDiscovery.push(mdns({ interval: opts.mdnsIntervalMs, serviceTag: MDNS_SERVICE_TAG }))
  return await createLibp2p({
    privateKey: opts.privateKey,
    addresses: { listen: opts.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery,
    connectionManager: { maxConnections: 256 },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        emitSelf: false,
        globalSignaturePolicy: 'StrictSign',
        allowPublishToZeroTopicPeers: true,
        floodPublish: true,
        // The mesh is small and local: gossip heartbeat faster than the 1 s default so a newcomer
        // is grafted quickly, and never forward a frame larger than a snapshot can be.
        heartbeatInterval: 700,
        maxInboundDataLength: MAX_GOSSIP_FRAME_BYTES
      })
    }
  }) as unknown as Host
}
