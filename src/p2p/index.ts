/**
 * The peer-to-peer layer: the libp2p host, the membership protocol and the peer table.
 * Nothing outside src/p2p imports its modules directly; they use this file.
 */
import '../polyfill.js'
export { Mesh, type MeshOptions, type MeshStats, type MeshEvents } from './mesh.js'
export { type PeerRecord, type PeerStatus, type MembershipTimings, PeerTable, onHeard, onLeave, onTick, onDisconnected, onRefused, newRecord } from './membership.js'
export { decodeMembership, encodeMembership, type MembershipMessage, type DropReason } from './messages.js'
export { createIdentity, encodeIdentity, decodeIdentity, peerIdOf } from './identity.js'
export { MEMBERSHIP_TOPIC, MDNS_SERVICE_TAG, MAX_MEMBERSHIP_MESSAGE_BYTES } from './constants.js'
export { isRefused } from './redialer.js'
export type { Host } from './host.js'
export { InferenceService, RemoteError, type InferenceReply, type InferenceHandler, type ViolationListener } from './inference.js'
export { isInferenceRequest, isInferenceResponse, type InferenceRequestFrame, type InferenceResponseFrame, type InferenceOp, type PassthroughRequest, type ErrorPayload } from './inference-messages.js'
export { FramedStream } from './framing.js'
export { INFERENCE_PROTOCOL } from './constants.js'
export {
  CommandService, CommandRefusedError, sendCommand, MAX_OUTPUT_LINE_CHARS, MAX_BUFFERED_OUTPUT_BYTES,
  type CommandReply, type CommandContext, type CommandReceiver, type SendCommandOptions
} from './command-protocol.js'
export * from './command-messages.js'
export { canonicalJson, signedBytes, publicKeyOfPeer, signObject, verifyObject, signDetached, SigningError, ED25519_SIGNATURE_BYTES } from './signing.js'
export {
  BlobService, BlobTransferError, FileDigests, openBlob, hashFileRange, isAborted,
  type BlobResolver, type BlobOpenOptions, type BlobDownload
} from './blob-protocol.js'
export { BLOB_PROTOCOL, isSafeModelName, isFingerprint } from './blob-messages.js'
export { reachableAddresses } from './addresses.js'
export { TrustPolicy, type TrustState } from './trust.js'
export { generateSwarmKey, readSwarmKey, SwarmKeyError } from './swarm-key.js'
