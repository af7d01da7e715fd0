/**
 * The scheduler: which node serves a request (routing, load balancing, circuit breaking), and
 * later which node runs which model (placement). Depends on src/node.
 */
export { Router, type RouterOptions, type RouteResult } from './router.js'
export { routerPortsOf, reconcilerViewOf, type RouterPorts, type HostView, type LocalCalls, type RemoteCalls, type ReconcilerView } from './router-ports.js'
export { PrefixAffinity, prefixKeys, preferPrefixHost, DEFAULT_PREFIX_AFFINITY, type PrefixAffinityOptions } from './prefix-affinity.js'
export { buildModelRegistry, chooseFingerprint, pinnedHosts, MIN_PIN_HEX, type MeshModel, type ModelHost, type FingerprintChoice, type RegistryPolicy } from './model-registry.js'
export { orderHosts, type BalanceStrategy } from './balancer.js'
export { CircuitBreaker } from './circuit-breaker.js'
export { Reconciler, type ReconcilerOptions, type DeploymentStatus, type CommandSender } from './reconciler.js'
export {
  placeReplicas, addReservations, PLACEMENT_DEFAULTS,
  type PlacementCandidate, type PlacementRequest, type PlacementDecision, type Placement, type PlacementKind,
  type PlacementStrategy, type PlacementConstraints, type NodeReservation, type Rejection, type RejectionCode
} from './placement.js'
export { Scheduler } from './scheduler.js'
