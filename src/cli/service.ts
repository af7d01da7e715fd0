/**
 * `shepherd-mesh service install|uninstall`: runs the node as a service (a systemd unit on Linux,
 * a launchd job on macOS) that starts this installation's bin with plain `node` — never `npx`,
 * whose npm wrapper does not pass SIGTERM on and costs ~70 MB — so `systemctl stop` reaches the
 * node, which leaves the mesh cleanly and takes its llama-server children with it.
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse, UsageError } from './args.js'

export const SERVICE_HELP = `Usage: shepherd-mesh service install [--system] [--print] [--name NAME] [-- START-OPTIONS...]
       shepherd-mesh service uninstall [--system] [--name NAME]

Installs the node as a service: a systemd unit on Linux (user unit by default, --system for
/etc/systemd/system), a launchd job on macOS. The service runs this installation's bin with node
directly (not npx, whose wrapper does not pass SIGTERM on), restarts it when it fails, and stops
it with SIGTERM (a clean leave; its llama-server processes stop with it). Options after -- are
passed to 'start'; keys belong in a file (--api-key-file), not in the unit.

Options:
  --system        install for the whole machine (needs root); default: this user
  --print         print the unit (or plist) instead of writing it
  --name NAME     service name (default shepherd-mesh)
  --platform P    linux or darwin (default: this machine's)
  -h, --help      show this help
`

export interface ServiceSpec {
  name: string
  system: boolean
  platform: 'linux' | 'darwin'
  /** Absolute path of node. */
  node: string
  /** Absolute path of bin/shepherd-mesh.js. */
  bin: string
  /** Options passed to `start`. */
  startArgs: string[]
  user: string
  home: string
}

/** A systemd word: quoted when it holds anything but safe characters; `%` and `$` escaped as systemd wants. */
function systemdWord (w: string): string {
  const escaped = w.replace(/%/g, '%%').replace(/\$/g, '$$$$')
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(escaped) ? escaped : `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`
}

/** The systemd unit of `spec`. */
export function systemdUnit (spec: ServiceSpec): string {
  const exec = [spec.node, spec.bin, 'start', ...spec.startArgs].map(systemdWord).join(' ')
  return `# Written by 'shepherd-mesh service install'. Remove with 'shepherd-mesh service uninstall${spec.system ? ' --system' : ''}'.
[Unit]
Description=shepherd-mesh node (one OpenAI-compatible LLM service from the machines of a LAN)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart=${exec}
${spec.system ? `User=${spec.user}\nWorkingDirectory=${systemdWord(spec.home)}\n` : ''}Environment=NODE_ENV=production
# SIGTERM to node itself: it leaves the mesh (peers see 'left' at once) and stops its children.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=20
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes

[Install]
WantedBy=${spec.system ? 'multi-user.target' : 'default.target'}
`
}

function xml (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
}

/** The launchd property list of `spec`. */
export function launchdPlist (spec: ServiceSpec): string {
  const args = [spec.node, spec.bin, 'start', ...spec.startArgs].map(a => `    <string>${xml(a)}</string>`).join('\n')
  return `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>${xml(launchdLabel(spec.name))}</string>
  <key>ProgramArguments</key>
  <array>
${args}
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ExitTimeOut</key>
  <integer>20</integer>
  <key>StandardErrorPath</key>
  <string>${xml(path.join(spec.home, 'Library', 'Logs', `${spec.name}.log`))}</string>
</dict>
</plist>
`
}

function launchdLabel (name: string): string {
  return `dev.shepherd-mesh.${name}`
}

/** Where the unit or plist goes. */
export function serviceFile (spec: ServiceSpec): string {
  if (spec.platform === 'darwin') {
    return spec.system ? `/Library/LaunchDaemons/${launchdLabel(spec.name)}.plist` : path.join(spec.home, 'Library', 'LaunchAgents', `${launchdLabel(spec.name)}.plist`)
  }
  return spec.system ? `/etc/systemd/system/${spec.name}.service` : path.join(spec.home, '.config', 'systemd', 'user', `${spec.name}.service`)
}

/** The commands that (de)activate the written file. */
function activation (spec: ServiceSpec, install: boolean): string[] {
  const file = serviceFile(spec)
  if (spec.platform === 'darwin') {
    const domain = spec.system ? 'system' : `gui/${os.userInfo().uid}`
    return install ? [`launchctl bootstrap ${domain} ${file}`] : [`launchctl bootout ${domain}/${launchdLabel(spec.name)}`]
  }
  const ctl = spec.system ? 'systemctl' : 'systemctl --user'
  if (!install) return [`${ctl} disable --now ${spec.name}`, `${ctl} daemon-reload`]
  return [`${ctl} daemon-reload`, `${ctl} enable --now ${spec.name}`, ...(spec.system ? [] : [`loginctl enable-linger ${spec.user}   # keep it running while you are logged out`]), `${spec.system ? 'journalctl' : 'journalctl --user'} -u ${spec.name} -f   # its log`]
}

/** This installation's bin script (the one `npm install -g` put on PATH, or the repo's). */
export function binPath (): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'shepherd-mesh.js')
}

/** Credentials would be readable in the unit file (and in `ps`): they belong in a key file. */
const SECRET_START_FLAGS = ['--api-key', '--join']

function specFrom (values: Record<string, unknown>, startArgs: string[]): ServiceSpec {
  const platform = String(values.platform ?? (process.platform === 'darwin' ? 'darwin' : 'linux'))
  if (platform !== 'linux' && platform !== 'darwin') throw new UsageError('--platform must be linux or darwin')
  const name = String(values.name ?? 'shepherd-mesh')
  if (!/^[A-Za-z0-9_.@-]{1,64}$/.test(name)) throw new UsageError('--name may hold letters, digits and _ . @ - only')
  const secret = startArgs.find(a => SECRET_START_FLAGS.some(f => a === f || a.startsWith(`${f}=`)))
  if (secret != null) throw new UsageError(`${secret.split('=')[0]} would be readable in the service file: use --api-key-file FILE (or SHEPHERD_JOIN in an environment file)`)
  const info = os.userInfo()
  return { name, system: values.system === true, platform, node: process.execPath, bin: binPath(), startArgs, user: info.username, home: info.homedir }
}

/** `shepherd-mesh service install|uninstall`. */
export async function service (args: string[], out: (line: string) => void): Promise<void> {
  const dash = args.indexOf('--')
  const own = dash >= 0 ? args.slice(0, dash) : args
  const startArgs = dash >= 0 ? args.slice(dash + 1) : []
  const { values, positionals } = parse(own, { system: { type: 'boolean' }, print: { type: 'boolean' }, name: { type: 'string' }, platform: { type: 'string' }, help: { type: 'boolean', short: 'h' } })
  if (values.help === true || positionals.length === 0) { out(SERVICE_HELP); return }
  if (positionals.length !== 1 || !['install', 'uninstall'].includes(positionals[0])) throw new UsageError("service needs 'install' or 'uninstall' (see --help)")
  const spec = specFrom(values, startArgs)
  const file = serviceFile(spec)
  if (positionals[0] === 'uninstall') {
    out(`first: ${activation(spec, false)[0]}`)
    try {
      await fs.unlink(file)
    } catch (err: any) {
      if (err.code === 'ENOENT') throw new UsageError(`no service file at ${file}`)
      throw new UsageError(`cannot remove ${file}: ${err.code ?? err.message}`)
    }
    out(`removed ${file}`)
    for (const c of activation(spec, false).slice(1)) out(`then:  ${c}`)
    return
  }
  const text = spec.platform === 'darwin' ? launchdPlist(spec) : systemdUnit(spec)
  if (values.print === true) { out(text.trimEnd()); return }
  try {
    await fs.mkdir(path.dirname(file), { recursive: true })
    await fs.writeFile(file, text, { mode: 0o644 })
  } catch (err: any) {
    throw new UsageError(`cannot write ${file}: ${err.code ?? err.message}${spec.system ? ' (--system needs root)' : ''}`)
  }
  out(`wrote ${file}`)
  for (const c of activation(spec, true)) out(`then:  ${c}`)
}
