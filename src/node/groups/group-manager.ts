import { EventEmitter } from 'node:events'
import type { Mesh } from '../../p2p/index.js'
import { createLogger } from '../../logger.js'
import { BadRequestError } from '../../errors.js'
import type { Store } from '../store.js'
import { decide, initialGroupState, onMembers, onView, type ElectionTimings, type GroupState } from './election.js'

export interface GroupMember {
  id: string
  name: string
  status: 'alive' | 'suspect' | 'dead' | 'left'
  self: boolean
}

export interface GroupView {
  name: string
  leader: string | null
  term: number
  /** Whether this node is a member. */
  joined: boolean
  members: GroupMember[]
}

export interface GroupManagerOptions extends ElectionTimings {
  /** No claim before this long after start, so a restarted node hears the current leader first. */
  startupGraceMs: number
  /**
   * A node that expects peers (it knows some, or has bootstrap addresses) waits until it has
   * heard one, or this long, before it may claim: a restarted node must not outbid a live leader
   * just because discovery was slow.
   */
  quietStartMs: number
  expectPeers: boolean
  tickMs: number
}

export interface GroupEvents {
  /** Leadership of a group changed (as this node sees it). */
  leader: [group: string, leader: string | null, term: number]
}

const TERM_KEY = (g: string): string => `term:${g}`
/** Groups this node keeps election state for, its own included. */
const MAX_TRACKED_GROUPS = 256
const MAX_GROUPS = 32
const MEMBERSHIP_KEY = 'groups'

/**
 * Swarm groups and their leaders. Membership is gossiped (heartbeats carry each node's groups);
 * leadership views ride on heartbeats too; terms are persisted so they only grow, across restarts.
 */
export class GroupManager extends EventEmitter<GroupEvents> {
  private readonly states = new Map<string, GroupState>()
  private timer?: NodeJS.Timeout
  private readonly startedAt = Date.now()
  private readonly log = createLogger('node:groups')

  private mesh!: Mesh<any>

  private constructor (
    private readonly store: Store,
    private readonly opts: GroupManagerOptions,
    private readonly self: () => string,
    private readonly selfName: string
  ) {
    super()
  }

  /** Loads persisted terms and the groups joined or left through the API. */
  static async create (store: Store, configured: string[], opts: GroupManagerOptions, self: () => string, selfName: string): Promise<{ manager: GroupManager, groups: string[] }> {
    const m = new GroupManager(store, opts, self, selfName)
    const saved = await store.getMeta<{ joined: string[], left: string[] }>(MEMBERSHIP_KEY)
    const groups = [...new Set([...configured, ...(saved?.joined ?? [])])].filter(g => !(saved?.left ?? []).includes(g))
    for (const g of groups) await m.ensure(g)
    return { manager: m, groups }
  }

  /** Follows `mesh`, which must announce the groups `create` returned. */
  attach (mesh: Mesh<any>): void {
    this.mesh = mesh
  }

  start (): void {
    this.mesh.on('peer:lead', (peer, lead) => {
      for (const [group, term, leader] of lead) void this.view(group, term, leader)
    })
    this.timer = setInterval(() => { void this.tick() }, this.opts.tickMs)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
  }

  private async ensure (group: string): Promise<GroupState | undefined> {
    let s = this.states.get(group)
    if (s == null) {
      // Peers name groups freely; keep state for a bounded number (own groups always fit).
      if (this.states.size >= MAX_TRACKED_GROUPS && !(this.mesh?.groups.includes(group) ?? true)) return undefined
      const term = (await this.store.getMeta<number>(TERM_KEY(group))) ?? 0
      s = this.states.get(group) ?? initialGroupState(group, term, Date.now())
      this.states.set(group, s)
    }
    return s
  }

  private async view (group: string, term: number, leader: string): Promise<void> {
    const s = await this.ensure(group)
    if (s == null) return
    const res = onView(s, { term, leader }, Date.now())
    if (!res.changed) return
    this.states.set(group, res.state)
    if (res.state.term > s.term) await this.store.putMeta(TERM_KEY(group), res.state.term)
    this.log.info('leader', { group, leader, term })
    this.emit('leader', group, res.state.leader, res.state.term)
  }

  private members (group: string): string[] {
    const ids = this.mesh.peers().filter(p => p.status === 'alive' && p.groups.includes(group)).map(p => p.id)
    if (this.mesh.groups.includes(group)) ids.push(this.self())
    return ids
  }

  private async tick (): Promise<void> {
    const now = Date.now()
    for (const p of this.mesh.peers()) for (const g of p.groups) if (!this.states.has(g)) await this.ensure(g)
    const elapsed = now - this.startedAt
    const heard = this.mesh.peers().length > 0
    const canClaim = elapsed >= this.opts.startupGraceMs && (!this.opts.expectPeers || heard || elapsed >= this.opts.quietStartMs)
    for (const [group, s0] of this.states) {
      let s = onMembers(s0, this.members(group), now)
      if (canClaim) {
        const res = decide(s, this.self(), now, this.opts)
        if (res.claim != null) {
          await this.store.putMeta(TERM_KEY(group), res.claim)
          this.states.set(group, res.state)
          this.log.info('claimed leadership', { group, term: res.claim })
          this.emit('leader', group, this.self(), res.claim)
          this.mesh.heartbeatNow()
          continue
        }
        s = res.state
      }
      this.states.set(group, s)
    }
  }

  /** Leadership entries for the heartbeat: this node's view of the groups it is in. */
  leadership (): Array<[string, number, string]> {
    const out: Array<[string, number, string]> = []
    for (const g of this.mesh.groups) {
      const s = this.states.get(g)
      if (s?.leader != null) out.push([g, s.term, s.leader])
    }
    return out
  }

  /** The current leader and term of a group, as this node sees it. */
  leaderOf (group: string): { leader: string | null, term: number } {
    const s = this.states.get(group)
    return { leader: s?.leader ?? null, term: s?.term ?? 0 }
  }

  isLeader (group: string): boolean {
    const s = this.states.get(group)
    return s != null && s.leader === this.self() && s.members.includes(this.self())
  }

  async join (group: string): Promise<void> {
    if (this.mesh.groups.includes(group)) return
    // Heartbeats carry at most MAX_GROUPS groups; one more would make this node invalid on the wire.
    if (this.mesh.groups.length >= MAX_GROUPS) throw new BadRequestError(`a node can be in at most ${MAX_GROUPS} groups`, 'name', 'too_many_groups')
    await this.ensure(group)
    this.mesh.setGroups([...this.mesh.groups, group])
    await this.saveMembership(group, 'join')
  }

  async leave (group: string): Promise<void> {
    if (!this.mesh.groups.includes(group)) return
    this.mesh.setGroups(this.mesh.groups.filter(g => g !== group))
    await this.saveMembership(group, 'leave')
  }

  private async saveMembership (group: string, op: 'join' | 'leave'): Promise<void> {
    const saved = (await this.store.getMeta<{ joined: string[], left: string[] }>(MEMBERSHIP_KEY)) ?? { joined: [], left: [] }
    const joined = new Set(saved.joined)
    const left = new Set(saved.left)
    if (op === 'join') { joined.add(group); left.delete(group) } else { left.add(group); joined.delete(group) }
    await this.store.putMeta(MEMBERSHIP_KEY, { joined: [...joined], left: [...left] })
  }

  list (): GroupView[] {
    return [...this.states.keys()].sort().map(g => this.get(g)!).filter(v => v.joined || v.members.length > 0)
  }

  get (group: string): GroupView | undefined {
    const s = this.states.get(group)
    if (s == null) return undefined
    const joined = this.mesh.groups.includes(group)
    const members: GroupMember[] = this.mesh.peers()
      .filter(p => p.groups.includes(group))
      .map(p => ({ id: p.id, name: p.name, status: p.status, self: false }))
    if (joined) members.unshift({ id: this.self(), name: this.selfName, status: 'alive', self: true })
    return { name: group, leader: s.leader, term: s.term, joined, members }
  }
}
