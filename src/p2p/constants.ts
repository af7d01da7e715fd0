/** Gossip topic of the membership protocol (heartbeats, snapshots, leave notices). */
export const MEMBERSHIP_TOPIC = '/shepherd/membership/1.0.0'

/** mDNS service tag, so only shepherd-mesh nodes answer each other on a LAN. */
export const MDNS_SERVICE_TAG = '_shepherd-mesh._udp.local'

/** Version of the membership wire messages; a receiver drops any other. */
export const MEMBERSHIP_VERSION = 1

/** Largest membership message accepted (a snapshot with a few hundred models fits). */
export const MAX_MEMBERSHIP_MESSAGE_BYTES = 256 * 1024

/** Largest gossipsub frame libp2p will read from a peer. */
export const MAX_GOSSIP_FRAME_BYTES = 512 * 1024

export const MAX_NAME_LENGTH = 64
export const MAX_GROUPS = 32
export const MAX_ADDRS = 16

/**
 * Inference requests relayed between nodes: a call head, its body as binary blocks, then results,
 * chunks or passthrough bytes back (src/p2p/inference-wire.ts). A stream carries one exchange
 * after another, so a relayed request does not pay for opening a stream. 2.0.0 replaced the JSON
 * frames of 1.x (bodies base64 in one frame of at most 8 MiB, every chunk parsed on each hop).
 */
export const INFERENCE_PROTOCOL = '/shepherd/openai/2.0.0'
/** Idle inference streams a node keeps to each peer. */
export const INFERENCE_IDLE_STREAMS_PER_PEER = 16
/** A requester closes an inference stream idle this long... */
export const INFERENCE_REQUESTER_IDLE_MS = 30_000
/** ...well before the host would close it, so a request never meets a stream the host is closing. */
export const INFERENCE_HOST_IDLE_MS = 60_000
export const INFERENCE_VERSION = 2
/** Largest request body relayed (chat JSON, audio, images); above any HTTP body limit the API sets (8 MiB by default). */
export const MAX_INFERENCE_BODY_BYTES = 64 * 1024 * 1024
/** A request body travels in blocks of at most this size, one frame each. */
export const INFERENCE_BODY_BLOCK_BYTES = 256 * 1024
/** Largest request frame: a call head or one body block, with its type byte. */
export const MAX_INFERENCE_REQUEST_BYTES = INFERENCE_BODY_BLOCK_BYTES + 1
/** Request bytes a host holds unread on one stream: what arrives after it paused the sender (a yamux window is at most 16 MiB). */
export const MAX_INFERENCE_BUFFERED_BYTES = 32 * 1024 * 1024
/** Largest call head (op, model, id, passthrough headers). */
export const MAX_INFERENCE_HEAD_BYTES = 64 * 1024
/** Largest response frame (a whole result, one chunk, or one passthrough block). */
export const MAX_INFERENCE_RESPONSE_BYTES = 32 * 1024 * 1024
/** A peer that opens a stream must send its request within this time (and each body block within it). */
export const INFERENCE_REQUEST_READ_TIMEOUT_MS = 10_000
export const MAX_INFERENCE_STREAMS = 512
