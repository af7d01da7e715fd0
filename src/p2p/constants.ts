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
 * Inference requests relayed between nodes: OpenAI bodies in, results or chunks out. A stream
 * carries one exchange after another, so a relayed request does not pay for opening a stream.
 */
export const INFERENCE_PROTOCOL = '/shepherd/openai/1.1.0'
/** The first version, one exchange per stream: still served, for nodes not yet upgraded. */
export const INFERENCE_PROTOCOL_SINGLE = '/shepherd/openai/1.0.0'
/** Idle inference streams a node keeps to each peer. */
export const INFERENCE_IDLE_STREAMS_PER_PEER = 16
/** A requester closes an inference stream idle this long... */
export const INFERENCE_REQUESTER_IDLE_MS = 30_000
/** ...well before the host would close it, so a request never meets a stream the host is closing. */
export const INFERENCE_HOST_IDLE_MS = 60_000
export const INFERENCE_VERSION = 1
/** Largest request frame (an OpenAI request body); matches the HTTP body limit. */
export const MAX_INFERENCE_REQUEST_BYTES = 8 * 1024 * 1024
/** Largest response frame (a whole result, one chunk, or one passthrough block). */
export const MAX_INFERENCE_RESPONSE_BYTES = 32 * 1024 * 1024
/** A peer that opens a stream must send its request within this time. */
export const INFERENCE_REQUEST_READ_TIMEOUT_MS = 10_000
export const MAX_INFERENCE_STREAMS = 512
