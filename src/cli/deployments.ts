/**
 * `shepherd-mesh deploy` (optionally waiting until placed, with a progress line) and
 * `shepherd-mesh deployments` (the list with progress), over `/api/deployments`.
 */
import { ShepherdError } from '../errors.js'
import { clientFlags, parse, UsageError } from './args.js'
import { apiBase, getJson } from './client.js'
import { bytes, table } from './format.js'
import { DEPLOY_HELP, DEPLOYMENTS_HELP } from './help.js'
import { parseTtl } from './members.js'

/** The part of `/api/deployments` the CLI reads (see src/api/deployment-progress.ts). */
export interface DeploymentView {
  model: string
  replicas: number
  group: string
  strategy?: string
  status: { leader: string | null, lastError: string | null, actual: Array<{ nodeId: string, name: string, state: string, shards?: Array<{ nodeId: string, layers: [number, number] | null }> }> }
  progress?: {
    phase: 'pending' | 'transferring' | 'loading' | 'placed' | 'failed' | 'unplaceable'
    desired: number
    placed: number
    replicas: Array<{ nodeId: string, name: string, phase: string, receivedBytes: number | null, totalBytes: number | null, percent: number | null, bytesPerSec: number | null, error: string | null }>
  }
}

/** How long `--wait` lets a failed or unplaceable deployment stay so before it gives up (the leader retries). */
export const WAIT_FAILURE_GRACE_MS = 10_000
const POLL_MS = 500

function bar (percent: number, width = 20): string {
  const full = Math.round(percent / 100 * width)
  return `[${'#'.repeat(full)}${'-'.repeat(width - full)}]`
}

/** One line of a deployment's progress, e.g. `tiny: transferring 0/1 · rig-2 [#####---] 25.0% 43M/173M 12M/s`. */
export function progressLine (d: DeploymentView): string {
  const p = d.progress
  if (p == null) return `${d.model}: ${d.status.actual.filter(a => a.state === 'loaded').length}/${d.replicas} loaded`
  const rows = p.replicas.map(r => {
    const who = r.name !== '' ? r.name : `…${r.nodeId.slice(-8)}`
    if (r.phase === 'transferring') {
      const pct = r.percent != null ? `${bar(r.percent)} ${r.percent.toFixed(1)}%` : ''
      return `${who} ${pct} ${bytes(r.receivedBytes)}/${bytes(r.totalBytes)}${r.bytesPerSec != null ? ` ${bytes(r.bytesPerSec)}/s` : ''}`.replace(/\s+/g, ' ')
    }
    if (r.phase === 'failed') return `${who} failed (${r.error ?? 'unknown'})`
    return `${who} ${r.phase}`
  })
  return [`${d.model}: ${p.phase} ${p.placed}/${p.desired}`, ...rows].join(' · ')
}

/** `shepherd-mesh deploy MODEL [--wait]`: desired state for a model, optionally waiting until placed. */
export async function deploy (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, {
    ...clientFlags,
    replicas: { type: 'string' },
    group: { type: 'string' },
    strategy: { type: 'string' },
    fingerprint: { type: 'string' },
    'gpu-required': { type: 'boolean' },
    'min-vram-mb': { type: 'string' },
    label: { type: 'string', multiple: true },
    split: { type: 'boolean' },
    wait: { type: 'boolean' },
    timeout: { type: 'string' }
  })
  if (values.help === true) { out(DEPLOY_HELP); return }
  if (positionals.length !== 1) throw new UsageError('deploy needs exactly one MODEL (see --help)')
  const replicas = values.replicas != null ? Number(values.replicas) : 1
  if (!Number.isInteger(replicas) || replicas < 1) throw new UsageError('--replicas must be a positive integer')
  const constraints: Record<string, unknown> = {}
  if (values['gpu-required'] === true) constraints.gpuRequired = true
  if (values.split === true) constraints.split = true
  if (values['min-vram-mb'] != null) {
    const mb = Number(values['min-vram-mb'])
    if (!Number.isInteger(mb) || mb < 0) throw new UsageError('--min-vram-mb must be a non-negative integer')
    constraints.minVramBytes = mb * 1024 * 1024
  }
  const labels = (values.label as string[] | undefined) ?? []
  for (const l of labels) if (!/^[^=]+=.*$/.test(l)) throw new UsageError(`--label '${l}' is not key=value`)
  if (labels.length > 0) constraints.labels = Object.fromEntries(labels.map(l => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
  const timeoutMs = parseTtl(String(values.timeout ?? '10m'))
  const body = {
    model: positionals[0],
    replicas,
    group: values.group ?? 'default',
    ...(values.strategy != null ? { strategy: values.strategy } : {}),
    ...(values.fingerprint != null ? { fingerprint: values.fingerprint } : {}),
    ...(Object.keys(constraints).length > 0 ? { constraints } : {})
  }
  const base = apiBase(values)
  const res = await getJson<DeploymentView>(base, '/api/deployments', { method: 'POST', body })
  if (values.wait !== true) {
    out(values.json === true ? JSON.stringify(res, null, 2) : `deployed ${positionals[0]}: ${replicas} replica(s) in group ${body.group}`)
    return
  }
  const done = await waitPlaced(base, positionals[0], timeoutMs, values.json === true ? () => {} : progressWriter())
  if (values.json === true) out(JSON.stringify(done, null, 2))
  else out(`placed ${done.model}: ${done.progress?.placed ?? replicas}/${done.replicas} replica(s) on ${(done.progress?.replicas ?? []).filter(r => r.phase === 'loaded').map(r => r.name).join(', ')}`)
}

/** Progress lines on stderr: rewritten in place on a terminal, one per change otherwise. */
function progressWriter (): (line: string, final?: boolean) => void {
  const tty = process.stderr.isTTY === true
  let last = ''
  return (line, final = false) => {
    if (line === last && !final) return
    last = line
    if (tty) process.stderr.write(`\r\x1b[2K${line}${final ? '\n' : ''}`)
    else process.stderr.write(`${line}\n`)
  }
}

/**
 * Polls the deployment until it is placed (resolves), failed or unplaceable for
 * `WAIT_FAILURE_GRACE_MS` (throws `deployment_failed` with the leader's last error), or `timeoutMs`
 * passes (throws `timeout`).
 */
export async function waitPlaced (base: string, model: string, timeoutMs: number, show: (line: string, final?: boolean) => void): Promise<DeploymentView> {
  const started = Date.now()
  let failingSince: number | null = null
  for (;;) {
    const { deployments } = await getJson<{ deployments: DeploymentView[] }>(base, '/api/deployments')
    const d = deployments.find(x => x.model === model)
    if (d == null) throw new ShepherdError(`the deployment of '${model}' is gone (undeployed meanwhile?)`, { code: 'deployment_not_found', status: 404 })
    const phase = d.progress?.phase ?? (d.status.actual.filter(a => a.state === 'loaded').length >= d.replicas ? 'placed' : 'pending')
    show(progressLine(d), phase === 'placed')
    if (phase === 'placed') return d
    if (phase === 'failed' || phase === 'unplaceable') {
      failingSince ??= Date.now()
      if (Date.now() - failingSince >= WAIT_FAILURE_GRACE_MS) {
        show(progressLine(d), true)
        const why = d.status.lastError ?? d.progress?.replicas.find(r => r.error != null)?.error ?? phase
        throw new ShepherdError(`${model} ${phase}: ${why}`, { code: 'deployment_failed', status: 409 })
      }
    } else failingSince = null
    if (Date.now() - started > timeoutMs) {
      show(progressLine(d), true)
      throw new ShepherdError(`${model} not placed after ${Math.round(timeoutMs / 1000)} s (${phase}); it stays deployed: see 'shepherd-mesh deployments'`, { code: 'timeout', status: 504 })
    }
    await new Promise(resolve => setTimeout(resolve, POLL_MS))
  }
}

/** `shepherd-mesh deployments`: every deployment with its progress. */
export async function deployments (args: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parse(args, clientFlags)
  if (values.help === true) { out(DEPLOYMENTS_HELP); return }
  if (positionals.length > 0) throw new UsageError('deployments takes no argument (see --help)')
  const { deployments } = await getJson<{ deployments: DeploymentView[] }>(apiBase(values), '/api/deployments')
  if (values.json === true) { out(JSON.stringify(deployments, null, 2)); return }
  if (deployments.length === 0) { out('no deployments'); return }
  out(table(['MODEL', 'GROUP', 'PLACED', 'PHASE', 'PROGRESS', 'LEADER'], deployments.map(d => {
    const p = d.progress
    const rows = (p?.replicas ?? []).filter(r => r.phase !== 'loaded').map(r => `${r.name || `…${r.nodeId.slice(-8)}`} ${r.phase}${r.percent != null && r.phase === 'transferring' ? ` ${r.percent.toFixed(1)}%` : ''}`)
    // A split replica: which node holds which layers (issue 16).
    for (const a of d.status.actual) if (a.shards != null) rows.push(`split ${a.shards.map(s => `…${s.nodeId.slice(-6)} ${s.layers == null ? '-' : `${s.layers[0]}-${s.layers[1]}`}`).join(' + ')}`)
    return [
      d.model,
      d.group,
      `${p?.placed ?? d.status.actual.filter(a => a.state === 'loaded').length}/${d.replicas}`,
      p?.phase ?? '-',
      rows.length > 0 ? rows.join(', ') : (p?.phase === 'failed' || p?.phase === 'unplaceable') && d.status.lastError != null ? d.status.lastError.slice(0, 80) : '-',
      d.status.leader != null ? `…${d.status.leader.slice(-8)}` : '-'
    ]
  })))
}
