import { stripControl } from '../p2p/text.js'
import { clientFlags, parse, UsageError } from './args.js'
import { apiBase, getJson } from './client.js'
import { table } from './format.js'

export const ADMIT_HELP = `Usage: shepherd-mesh admit NAME|ID [--api URL]

Admits a pending peer (see 'shepherd-mesh peers') into this node's mesh: this node signs an
admission that every member stores and checks. A name that several peers use is refused with
the list of their ids: give the id then.
`
export const REVOKE_HELP = `Usage: shepherd-mesh revoke NAME|ID [--api URL]

Revokes a member: signed and sent to every member; it is cut off at once and stays out until a
member admits it again.
`
export const INVITE_HELP = `Usage: shepherd-mesh invite [--ttl 1h] [--api URL]

Prints a single-use invite token to this node's mesh (expires after --ttl: s, m, h or d; at most
7d). On the new machine: SHEPHERD_JOIN=TOKEN shepherd-mesh start (or --join TOKEN, which other
users can see in ps). The token is a credential: pass it privately.
`
export const MEMBERS_HELP = `Usage: shepherd-mesh members [--api URL] [--json]

Lists this node's mesh: its members, pending peers (awaiting 'admit') and revoked peers.
`

/** Parses 90s, 15m, 1h, 2d into ms. */
export function parseTtl (text: string): number {
  const m = /^(\d+)(s|m|h|d)$/.exec(text.trim())
  if (m == null) throw new UsageError(`--ttl '${stripControl(text)}' is not a duration like 30m, 1h or 2d`)
  const ms = Number(m[1]) * { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd']
  if (ms < 1000 || ms > 7 * 86_400_000) throw new UsageError('--ttl must be between 1s and 7d')
  return ms
}

async function change (verb: 'admit' | 'revoke', help: string, args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, clientFlags)
  if (values.help === true) { out(help); return }
  if (positionals.length !== 1) throw new UsageError(`${verb} needs exactly one NAME or ID (see --help)`)
  const res = await getJson<{ id: string, status: string }>(apiBase(values), `/api/members/${encodeURIComponent(positionals[0])}/${verb}`, { method: 'POST', body: {} })
  out(`${verb === 'admit' ? 'admitted' : 'revoked'} ${res.id} (now ${res.status})`)
}

/** `shepherd-mesh admit NAME|ID`. */
export async function admit (args: string[], out: (line: string) => void): Promise<void> {
  await change('admit', ADMIT_HELP, args, out)
}

/** `shepherd-mesh revoke NAME|ID`. */
export async function revoke (args: string[], out: (line: string) => void): Promise<void> {
  await change('revoke', REVOKE_HELP, args, out)
}

/** `shepherd-mesh invite [--ttl 1h]`: prints the token alone on stdout (for scripts). */
export async function invite (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, { ...clientFlags, ttl: { type: 'string' } })
  if (values.help === true) { out(INVITE_HELP); return }
  if (positionals.length > 0) throw new UsageError('invite takes no argument (see --help)')
  const ttlMs = parseTtl(String(values.ttl ?? '1h'))
  const res = await getJson<{ token: string, expiresAt: string }>(apiBase(values), '/api/invites', { method: 'POST', body: { ttlMs } })
  if (values.json === true) { out(JSON.stringify(res)); return }
  process.stderr.write(`shepherd-mesh: single-use invite, expires ${res.expiresAt}; on the new machine: SHEPHERD_JOIN=<token> shepherd-mesh start\n`)
  out(res.token)
}

/** `shepherd-mesh members`. */
export async function members (args: string[], out: (line: string) => void): Promise<void> {
  const { values } = parse(args, clientFlags)
  if (values.help === true) { out(MEMBERS_HELP); return }
  const res = await getJson<{ mesh: string | null, mode: string, members: Array<{ id: string, name: string, status: string, since: string | null, connected: boolean }> }>(apiBase(values), '/api/members')
  if (values.json === true) { out(JSON.stringify(res, null, 2)); return }
  out(`mesh ${res.mesh ?? '-'} (${res.mode})`)
  out(table(['NAME', 'ID', 'STATUS', 'SINCE', 'CONNECTED'], res.members.map(m => [m.name || '-', m.id, m.status, m.since ?? '-', m.connected ? 'yes' : 'no'])))
}
