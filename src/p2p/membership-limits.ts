/**
 * Bounds of the membership layer's state (issue 14, "bounded state"): what one peer, or one
 * connection relaying for others, can make this node keep, dial or work on. Each number is far
 * above what an honest node sends and far below what made a node fall over in the attacks.
 */

/** A sender's clock may run this far ahead of ours; a timestamp beyond is clamped to it. */
export const MAX_CLOCK_SKEW_MS = 30_000

/**
 * Snapshot bytes accepted per origin a second, and the burst. An honest node publishes a few KiB on
 * a change (128 KiB with a full deployment set) and at most every `MIN_SNAPSHOT_GAP_MS`; one peer
 * re-sending 240 KiB every 50 ms (4.8 MB/s) once cost its victim a third of a core.
 */
export const STATE_BYTES_PER_SEC = 128 * 1024
export const STATE_BYTES_BURST = 768 * 1024

/** Messages below this size are not charged to the byte budget (heartbeats: ~200 bytes). */
export const STATE_BYTES_FREE = 4096

/**
 * Peers not verified by this node (not connected, not vouched for by the ledger) that one
 * relaying connection may name within `UNVERIFIED_WINDOW_MS`: beyond, their gossip is ignored.
 */
export const MAX_UNVERIFIED_PER_SOURCE = 16
export const UNVERIFIED_WINDOW_MS = 60_000

/** Least time between two snapshots this node publishes: changes in between are merged into one. */
export const MIN_SNAPSHOT_GAP_MS = 250

/** Peers whose snapshot this node asks for in one heartbeat (`want`), at most. */
export const MAX_WANTS = 8
