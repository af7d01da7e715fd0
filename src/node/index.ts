/**
 * The node: identity, durable store, resources and the mesh view. Depends on src/p2p only.
 */
export { MeshNode, type PeerView, type PeerEvent, type PeerEventType, type NodeMetrics, type ProgressEvent } from './mesh-node.js'
export { TransferTracker, percentOf, type TransferRow, type ReplicaPhase } from './transfers.js'
export { Store, StoreError, type KnownPeer, type AuditEntry, type RecordTable } from './store.js'
export { EngineHub, type LocalModel } from './engine-hub.js'
export { JsonPayload, requestIdFrom, PASSTHROUGH_PATHS, type PassthroughPath, type InferenceCall, type InferenceOp, type InferenceReply, type ChatCall, type CompletionCall, type EmbeddingsCall, type PassthroughCall } from './inference-call.js'
export { RemoteInference, relayHandler, toRelayRequest, fromRelayRequest, toRelayReply, fromRelayReply, type RemoteCallOptions } from './relay.js'
export { Admission } from './admission.js'
export { DeploymentStore, type Deployment, type DeploymentConstraints } from './deployments.js'
export { GroupManager, type GroupView, type GroupMember } from './groups/index.js'
export { isNodeSnapshot, type NodeSnapshot, type ModelSummary } from './snapshot.js'
export type { NodeResources, GpuInfo, LlamacppBuild, ModelFile, CpuInfo, MemoryInfo, DiskInfo } from './resources/types.js'
export { ControlPlane, MEMBER_OPERATOR_TERM, operatorAuthority } from './control-plane.js'
export { AmbiguousPeerError } from './membership.js'
export * from './commands/index.js'
export { fetchModel, modelResolver, defaultModelsDestDir, transferPaths, ModelTransferError, type FetchModelResult, type FetchModelOptions } from './model-transfer.js'
