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
