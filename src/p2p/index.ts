/**
 * The peer-to-peer layer: the libp2p host, the membership protocol and the peer table.
 * Nothing outside src/p2p imports its modules directly; they use this file.
 */
import '../polyfill.js'
export { Mesh, type MeshOptions, type MeshStats, type MeshEvents } from './mesh.js'
export { type PeerRecord, type PeerStatus, type MembershipTimings, PeerTable, onHeard, onLeave, onTick, onDisconnected, onRefused, newRecord } from './membership.js'
export {
  initSwim, step as swimStep, nextDeadline as swimDeadline, memberOf as swimMember, SWIM_LAN_DEFAULTS,
  type SwimState, type SwimEvent, type SwimAction, type SwimMessage, type SwimConfig, type SwimUpdate, type SwimStatus
} from './swim.js'
export { SwimDriver, type SwimDriverOptions, type SwimDriverStats, type SwimHealth } from './swim-driver.js'
export type { MemberExchangeStats } from './member-exchange.js'
export type { RedialStats } from './redialer.js'
export { SWIM_PROTOCOL, MAX_SWIM_FRAME_BYTES, isSwimFrame, screenUpdates, type SwimFrame } from './swim-protocol.js'
export { simulate as simulateSwim, type SimOptions as SwimSimOptions, type SimResult as SwimSimResult } from './swim-sim.js'
export { decodeMembership, encodeMembership, type MembershipMessage, type DropReason } from './messages.js'
export { createIdentity, encodeIdentity, decodeIdentity, peerIdOf } from './identity.js'
export { MEMBERSHIP_TOPIC, MDNS_SERVICE_TAG, MAX_MEMBERSHIP_MESSAGE_BYTES } from './constants.js'
export { isRefused } from './redialer.js'
export { DuplicateIdentityDetector, DUPLICATE_IDENTITY_DEFAULTS, type DuplicateIdentity, type DuplicateIdentityOptions } from './duplicate-identity.js'
export type { Host } from './host.js'
export { InferenceService, RemoteError, type RelayRequest, type RelayReply, type RelayHandler, type ViolationListener } from './inference.js'
export { PASSTHROUGH_PATHS, REQUEST_ID_PATTERN, type RelayOp, type RelayPass, type PassthroughPath, type ErrorPayload } from './inference-messages.js'
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
export { RpcTunnelService, RPC_TUNNEL_PROTOCOL, RPC_TUNNEL_DEFAULTS, encodeTunnelHeader, decodeTunnelHeader, type TunnelListener, type TunnelVerdict, type RpcTunnelServeOptions, type RpcTunnelStats } from './rpc-tunnel.js'
export { TrustPolicy, changedLists, type TrustState, type MembershipMode, type TrustLists, type TrustChange } from './trust.js'
export { AdmissionService, AdmissionError, foundMesh, type AdmissionBackend } from './admission.js'
export { ADMISSION_PROTOCOL, MAX_LEDGER_STATEMENTS, cleanName, signStatement, statementId, isStatement, type Statement } from './admission-messages.js'
export { replay, applyStatements, adoption, withValidSignatures, type LedgerState, type MemberInfo } from './ledger.js'
export { createInvite, decodeInvite, checkInvite, MAX_INVITE_TTL_MS, type InviteToken } from './invite.js'
export { PendingPeers, MAX_PENDING_PEERS, type PendingPeer } from './pending-peers.js'
export { compileSchema } from './schemas.js'
export { generateSwarmKey, readSwarmKey, SwarmKeyError } from './swarm-key.js'
export { stripControl, stripControlDeep, hasControl } from './text.js'
export {
  VOTE_PROTOCOL, MAX_TERM, MAX_CERT_VOTES, VOTE_SIGNING_DOMAIN, isVoteRequest, isVoteResponse, isLeaderCertificate, signVote, verifyVote,
  type VoteStatement, type SignedVote, type LeaderCertificate, type VoteRequestFrame, type VoteResponseFrame
} from './vote-messages.js'
export { VoteService, requestVote, type VoteHandler } from './vote-protocol.js'
