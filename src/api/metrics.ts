import type { NodeMetrics } from '../node/index.js'

/** Renders the node's metrics in the Prometheus text exposition format (version 0.0.4). */
export function renderPrometheus (m: NodeMetrics, extra: { rssBytes: number, heapUsedBytes: number }): string {
  const lines: string[] = []
  const metric = (name: string, type: 'counter' | 'gauge', help: string, samples: Array<[labels: string, value: number]>): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`)
  }
  const g = m.gossip
  metric('shepherd_gossip_bytes_sent_total', 'counter', 'Membership gossip bytes sent (payload x recipients).', [['', g.gossipBytesSent]])
  metric('shepherd_gossip_bytes_received_total', 'counter', 'Membership gossip bytes received.', [['', g.gossipBytesReceived]])
  metric('shepherd_gossip_messages_sent_total', 'counter', 'Membership messages published.', [['', g.messagesSent]])
  metric('shepherd_gossip_messages_received_total', 'counter', 'Membership messages received.', [['', g.messagesReceived]])
  metric('shepherd_gossip_messages_dropped_total', 'counter', 'Membership messages dropped, by reason.',
    Object.entries(g.dropped).map(([reason, n]) => [`{reason="${reason}"}`, n]))
  metric('shepherd_membership_work_total', 'counter', 'Membership work done: snapshots validated, applied and published; snapshots asked for and answered; records evicted.',
    Object.entries(g.work).map(([kind, n]) => [`{kind="${kind.replace(/[A-Z]/g, c => '_' + c.toLowerCase())}"}`, n]))
  metric('shepherd_mdns_queries_total', 'counter', 'mDNS queries sent (they back off while connected).', [['', g.mdns.queries]])
  metric('shepherd_mdns_answers_total', 'counter', 'Peers named by mDNS answers: passed on to libp2p, or dropped as connected already.',
    [['{outcome="announced"}', g.mdns.announced], ['{outcome="suppressed"}', g.mdns.suppressed]])
  if (m.swim != null) {
    const w = m.swim
    metric('shepherd_swim_frames_total', 'counter', 'SWIM frames (probes, acks, indirect probes) sent and received.',
      [['{direction="sent"}', w.framesSent], ['{direction="received"}', w.framesReceived]])
    metric('shepherd_swim_send_failures_total', 'counter', 'SWIM frames that could not be sent (peer unreachable, stream refused).', [['', w.sendFailures]])
    metric('shepherd_swim_violations_total', 'counter', 'SWIM protocol violations by members (stream reset, audited).', [['', w.violations]])
    metric('shepherd_swim_screened_total', 'counter', 'SWIM updates about third parties dropped or downgraded (not verifiable here).', [['', w.screened]])
    metric('shepherd_swim_links_opened_total', 'counter', 'SWIM links (one long-lived stream per pair of members) opened, either way.', [['', w.linksOpened]])
    metric('shepherd_swim_rate_limited_total', 'counter', 'SWIM frames dropped: their sender went past the per-member frame rate.', [['', w.rateLimited]])
  }
  if (m.swimHealth != null) {
    const h = m.swimHealth
    metric('shepherd_swim_local_health', 'gauge', 'Lifeguard awareness: SWIM probe timing is stretched by it plus one while this node seems to be the slow one.', [['', h.awareness]])
    if (h.srttMs != null) metric('shepherd_swim_rtt_ms', 'gauge', 'Smoothed round trip of direct SWIM acks (ms).', [['', h.srttMs]])
    metric('shepherd_swim_probes_total', 'counter', 'SWIM probes this node started, by outcome (failed: no ack, direct or relayed, within the interval; each raises or confirms a suspicion).',
      [['{outcome="acked"}', h.probes - h.failedProbes], ['{outcome="failed"}', h.failedProbes]])
    metric('shepherd_swim_refutes_total', 'counter', 'Suspicions of this node that it refuted (a raised incarnation).', [['', h.refutes]])
    metric('shepherd_swim_late_ticks_total', 'counter', 'SWIM timer ticks that ran more than half a probe timeout late (the event loop was starved).', [['', h.lateTicks]])
  }
  metric('shepherd_connections', 'gauge', 'Open libp2p connections.', [['', m.connections]])
  const rd = m.redial
  metric('shepherd_redial_targets', 'gauge', 'Peers the redialer keeps connected, by how it heard of them (hinted: through gossip or a member list only).',
    [['{kind="known"}', rd.targets - rd.hinted], ['{kind="hinted"}', rd.hinted]])
  metric('shepherd_redial_dials_total', 'counter', 'Dials the redialer made, by kind; those that failed; hints refused (over the hinted cap) and dropped (unreachable).',
    [['{kind="all"}', rd.dials], ['{kind="hint"}', rd.hintDials], ['{kind="failed"}', rd.failed], ['{kind="hint_refused"}', rd.hintsRefused], ['{kind="hint_dropped"}', rd.hintsDropped]])
  const mx = m.members
  metric('shepherd_member_exchanges_total', 'counter', 'Member-list exchanges (/shepherd/members/1.0.0), by outcome.',
    [['{outcome="exchanged"}', mx.exchanged], ['{outcome="failed"}', mx.failures], ['{outcome="served"}', mx.served], ['{outcome="refused"}', mx.refused]])
  const hb = g.heartbeatDelay
  lines.push('# HELP shepherd_heartbeat_delay_ms Heartbeat delivery delay: receiver clock minus sender clock at publish.', '# TYPE shepherd_heartbeat_delay_ms histogram')
  for (const [le, n] of hb.cumulative()) lines.push(`shepherd_heartbeat_delay_ms_bucket{le="${le}"} ${n}`)
  lines.push(`shepherd_heartbeat_delay_ms_sum ${hb.sum}`, `shepherd_heartbeat_delay_ms_count ${hb.count}`)
  const r = m.relay
  metric('shepherd_relay_requests_sent_total', 'counter', 'Inference requests sent to peers, by the stream they went on (pooled or newly opened).',
    [['{stream="reused"}', r.reused], ['{stream="new"}', r.requested - r.reused]])
  metric('shepherd_relay_stale_retries_total', 'counter', 'Requests sent again on a new stream after a pooled one broke before the answer.', [['', r.staleRetries]])
  metric('shepherd_relay_requests_served_total', 'counter', 'Inference requests served for peers, by outcome.', [['{outcome="ok"}', r.served], ['{outcome="error"}', r.failed]])
  metric('shepherd_relay_violations_total', 'counter', 'Inference protocol violations by peers.', [['', r.violations]])
  metric('shepherd_relay_idle_streams', 'gauge', 'Pooled inference streams to peers, idle now.', [['', r.idleStreams]])
  metric('shepherd_peers', 'gauge', 'Peers by status.', Object.entries(m.peersByStatus).map(([s, n]) => [`{status="${s}"}`, n]))
  metric('shepherd_snapshot_version', 'gauge', 'Version of this node\'s resource snapshot.', [['', m.snapshotVersion]])
  metric('shepherd_uptime_seconds', 'gauge', 'Seconds since the node started.', [['', m.uptimeSec]])
  metric('process_resident_memory_bytes', 'gauge', 'Resident memory size in bytes.', [['', extra.rssBytes]])
  metric('nodejs_heap_used_bytes', 'gauge', 'V8 heap used in bytes.', [['', extra.heapUsedBytes]])
  return lines.join('\n') + '\n'
}
