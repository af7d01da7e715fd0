/**
 * A peer's loopback addresses are only reachable from its own machine: dialing them from another
 * host reaches that host's own listener (wrong key), which hides a crashed peer's refusal. Keep
 * them only when the peer has nothing else (every node on one machine, as in tests).
 */
export function reachableAddresses (addrs: string[]): string[] {
  const isLoopback = (a: string): boolean => a.startsWith('/ip4/127.') || a.startsWith('/ip6/::1/') || a.startsWith('/dns4/localhost/')
  const remote = addrs.filter(a => !isLoopback(a))
  return remote.length > 0 ? remote : addrs
}
