import '../polyfill.js'
// Private meshes' cipher (pnet → xsalsa20) crashed the process on large transfers: see the guard.
import './xsalsa20-guard.js'
// Window updates once half a stream's window is used, not after every frame: see the module.
import './yamux-window.js'
// `onDrain()` that waits for the next drain (the library's resolves at once after the first): see the module.
import './stream-drain.js'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { createPeerScoreParams, createPeerScoreThresholds, createTopicScoreParams } from '@libp2p/gossipsub/score'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p, type Libp2p } from 'libp2p'
import { preSharedKey } from '@libp2p/pnet'
import type { PrivateKey, PeerDiscovery, PeerId } from '@libp2p/interface'
import type { TrustPolicy } from './trust.js'
import { MAX_GOSSIP_FRAME_BYTES, MEMBERSHIP_TOPIC } from './constants.js'
import { ADMISSION_PROTOCOL } from './admission-messages.js'
import { lanDiscovery, type LanDiscoveryStats } from './lan-discovery.js'

export interface HostOptions {
  privateKey: PrivateKey
  listen: string[]
  mdns: boolean
  mdnsIntervalMs: number
  /** Longest mDNS query interval once connected (the interval doubles up to it). Default 30 s. */
  mdnsMaxIntervalMs?: number
  /** mDNS counters to keep up to date. */
  mdnsStats?: LanDiscoveryStats
  /** A swarm key (`/key/swarm/psk/1.0.0/` file content): only nodes with the same key connect. */
  swarmKey?: Uint8Array
  /** Who may connect; checked once the remote's identity is proven (after noise). */
  trust?: TrustPolicy
  /** Open connections at most; libp2p prunes beyond (default 256). */
  maxConnections?: number
}

/** Local processes (several nodes on one machine): exempt from libp2p's per-host inbound rate. */
const LOOPBACK = ['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1/ipcidr/128']

/** Gossip score of a non-member: below `publishThreshold` (-50), above `graylistThreshold` (-80). */
const NON_MEMBER_SCORE = -60

export type Host = Libp2p<{ identify: ReturnType<ReturnType<typeof identify>>, ping: ReturnType<ReturnType<typeof ping>>, pubsub: ReturnType<ReturnType<typeof gossipsub>> }>

/**
 * The libp2p host: tcp + noise + yamux, identify, ping, gossipsub (StrictSign) and, on a LAN, mDNS.
 * Dials are left to the mesh (no autodial), so every connection attempt is ours to time and count.
 */
export async function createHost (opts: HostOptions): Promise<Host> {
  const peerDiscovery: Array<(components: any) => PeerDiscovery> = []
  if (opts.mdns) peerDiscovery.push(lanDiscovery({ intervalMs: opts.mdnsIntervalMs, maxIntervalMs: Math.max(opts.mdnsIntervalMs, opts.mdnsMaxIntervalMs ?? 30_000), stats: opts.mdnsStats }))
  const host = await createLibp2p({
    privateKey: opts.privateKey,
    addresses: { listen: opts.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery,
    connectionManager: {
      maxConnections: opts.maxConnections ?? 256,
      // A newcomer is dialed by every member at once (each hears of it and the LAN mesh is a full
      // mesh): libp2p's default of 10 handshakes pending refused the rest, and a refused dial of a
      // peer heard of through gossip counts toward dropping it. As many as connections allowed.
      maxIncomingPendingConnections: opts.maxConnections ?? 256,
      // libp2p accepts 5 connections a second per remote host, and a LAN host runs one node. Nodes
      // on this machine share one host (127.0.0.1): a 32-node mesh on loopback then took a minute
      // to meet a newcomer. Loopback is this machine's own processes, not the LAN.
      allow: LOOPBACK
    },
    // Membership already detects dead peers and measures RTT (its own ping probe). libp2p's monitor
    // would ping on the same protocol and, when our probe holds the one ping stream, count that as a
    // failure and abort a healthy connection with every inference stream on it.
    connectionMonitor: { enabled: false },
    ...(opts.swarmKey != null ? { connectionProtector: preSharedKey({ psk: opts.swarmKey }) } : {}),
    connectionGater: {
      denyDialPeer: (peer: PeerId) => opts.trust != null && !opts.trust.allows(peer.toString()),
      denyInboundEncryptedConnection: (peer: PeerId) => opts.trust != null && !opts.trust.allows(peer.toString()),
      denyOutboundEncryptedConnection: (peer: PeerId) => opts.trust != null && !opts.trust.allows(peer.toString())
    },
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
        maxInboundDataLength: MAX_GOSSIP_FRAME_BYTES,
        // Every publish goes straight to every member it is connected to (flood publish; the LAN
        // mesh is a full mesh up to 48 nodes), so the topic mesh only backs that up: each mesh
        // peer forwards a copy that is almost always a duplicate. With the default degree (6, up to
        // 12) an idle 16-node mesh received each snapshot ~10 times, and IHAVE gossip went to a
        // quarter of all peers every heartbeat: both grow with the mesh. A degree of 3 (2-5) keeps
        // a random mesh connected, and gossip goes to 2 peers per heartbeat whatever the size.
        D: 3,
        Dlo: 2,
        Dhi: 5,
        Dout: 1,
        Dscore: 2,
        Dlazy: 2,
        gossipFactor: 0,
        // Peer scoring: a peer that delivers invalid membership messages (rejected by the topic
        // validator) loses score fast and is graylisted, so its traffic is ignored. The delivery-rate
        // terms stay off: in a small LAN mesh honest peers are quiet, not failing.
        scoreParams: createPeerScoreParams({
          // A peer that is no member scores between the publish and graylist thresholds: this node
          // publishes and gossips nothing to it (its snapshots hold addresses, models, resources)
          // and keeps it out of the topic mesh, yet still reads its subscriptions, so a peer that
          // becomes a member is published to as soon as its score is recomputed (each heartbeat).
          appSpecificScore: (peer: string) => opts.trust != null && !opts.trust.isMember(peer) ? NON_MEMBER_SCORE : 0,
          appSpecificWeight: 1,
          // Nodes on one machine (loopback) are not sybils: membership is gated by trust. With
          // the default colocation penalty, a node with more than ~13 peers on 127.0.0.1 scored
          // them all below the graylist and stopped relaying: 16 local nodes never all met.
          IPColocationFactorWhitelist: new Set(['127.0.0.1', '::1']),
          topics: {
            [MEMBERSHIP_TOPIC]: createTopicScoreParams({
              topicWeight: 1,
              timeInMeshWeight: 0.01,
              firstMessageDeliveriesWeight: 0,
              meshMessageDeliveriesWeight: 0,
              meshFailurePenaltyWeight: 0,
              invalidMessageDeliveriesWeight: -50,
              invalidMessageDeliveriesDecay: 0.9
            })
          }
        }),
        scoreThresholds: createPeerScoreThresholds({ gossipThreshold: -10, publishThreshold: -50, graylistThreshold: -80, acceptPXThreshold: 10, opportunisticGraftThreshold: 20 })
      })
    }
  }) as unknown as Host
  if (opts.trust != null) guardHandlers(host, opts.trust)
  return host
}

/**
 * Every protocol handler registered on this host (ours: openai, cmd, blob, ...) first checks that
 * the remote peer is a member, so a peer that is none (pending, revoked) gets no service, even on
 * a stream opened before its connection was closed. identify and ping are libp2p's own services
 * (registered with the registrar, not here) and stay open.
 */
function guardHandlers (host: Host, trust: TrustPolicy): void {
  const handle = host.handle.bind(host)
  host.handle = async (protocols, handler, options) => {
    // Admission is how a peer that is no member asks to become one; every other protocol
    // (inference, commands, blobs, votes, and any added later) serves members only.
    const open = (Array.isArray(protocols) ? protocols : [protocols]).every(p => p === ADMISSION_PROTOCOL)
    const guarded: typeof handler = (stream, conn) => {
      const peer = conn.remotePeer.toString()
      if (open ? !trust.allows(peer) : !trust.isMember(peer)) {
        trust.emit('refused', peer, stream.protocol)
        stream.abort(new Error('peer is no member of this mesh'))
        return
      }
      return handler(stream, conn)
    }
    await handle(protocols, guarded, options)
  }
}
