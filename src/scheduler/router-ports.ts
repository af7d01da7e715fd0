/**
 * What the router and the reconciler need from the node, and nothing more: a view of the hosts,
 * a local call, a remote call, capacity, and (for the reconciler) groups and deployments. The
 * node's parts are wired to them in one place ({@link routerPortsOf}, {@link reconcilerPortsOf});
 * unit tests give fakes instead of a whole node (test/scheduler/router.test.ts, reconciler.test.ts).
 */
import type { Deployment, InferenceCall, InferenceReply, MeshNode, PeerView, RemoteCallOptions } from '../node/index.js'

/** This node and the members it sees (members only: the router never routes to anyone else). */
export interface HostView {
  self: () => PeerView
  peers: () => PeerView[]
  /** The fingerprint a model's deployment names, if it is deployed. */
  deployedFingerprint: (model: string) => string | undefined
}

/** This node's engines: a call run here, and how many calls run now out of how many may. */
export interface LocalCalls {
  run: (call: InferenceCall, signal: AbortSignal) => Promise<InferenceReply>
  capacity: () => { active: number, maxConcurrent: number }
}

/** A call run by a peer's engines across the mesh. */
export interface RemoteCalls {
  call: (peer: string, call: InferenceCall, opts: RemoteCallOptions) => Promise<InferenceReply>
}

export interface RouterPorts {
  view: HostView
  local: LocalCalls
  remote: RemoteCalls
  /** Milliseconds, for the prefix table's time to live (tests give a fake clock). */
  now?: () => number
}

/** The router's ports on a real node. */
export function routerPortsOf (node: MeshNode): RouterPorts {
  return {
    view: {
      self: () => node.self(),
      peers: () => node.peers(),
      deployedFingerprint: model => node.deployments.get(model)?.fingerprint
    },
    local: {
      run: async (call, signal) => await node.hub.run(call, signal),
      capacity: () => ({ active: node.hub.admission.active, maxConcurrent: node.hub.admission.maxConcurrent })
    },
    remote: { call: async (peer, call, opts) => await node.remote.call(peer, call, opts) }
  }
}

/** What the reconciler reads of the mesh and its groups. */
export interface ReconcilerView {
  self: () => PeerView
  peers: () => PeerView[]
  /** Every deployment record, tombstones included. */
  deployments: () => Deployment[]
  /** Whether this node has joined `group`. */
  joined: (group: string) => boolean
  isLeader: (group: string) => boolean
  leaderOf: (group: string) => { leader: string | null, term: number }
  /** Calls `fn` on what should trigger a reconcile soon: a peer change, a deployment change. */
  onChange: (fn: () => void) => void
}

/** The reconciler's view on a real node. */
export function reconcilerViewOf (node: MeshNode): ReconcilerView {
  return {
    self: () => node.self(),
    peers: () => node.peers(),
    deployments: () => node.deployments.gossip(),
    joined: group => node.groups.get(group)?.joined === true,
    isLeader: group => node.groups.isLeader(group),
    leaderOf: group => node.groups.leaderOf(group),
    onChange: fn => {
      node.on('peer', ev => { if (ev.type !== 'peer:alive') fn() })
      node.deployments.on('change', fn)
    }
  }
}
