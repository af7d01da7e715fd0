/**
 * One named, structured logger per component. Quiet by default: only warnings and errors
 * print unless `SHEPHERD_LOG` (or `--log-level`) asks for more. Lines are JSON on stderr.
 */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent'

const ORDER: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, silent: 100 }

let threshold: number = ORDER[(process.env.SHEPHERD_LOG as LogLevel) ?? 'warn'] ?? ORDER.warn

/** Keys whose values are never written, whatever component logs them. */
const SECRET_KEY = /(key|token|secret|password|authorization|signature)/i

export function setLogLevel (level: LogLevel): void {
  threshold = ORDER[level] ?? ORDER.warn
}

export function getLogLevel (): LogLevel {
  return (Object.keys(ORDER) as LogLevel[]).find(l => ORDER[l] === threshold) ?? 'warn'
}

export interface Logger {
  trace: (msg: string, fields?: Record<string, unknown>) => void
  debug: (msg: string, fields?: Record<string, unknown>) => void
  info: (msg: string, fields?: Record<string, unknown>) => void
  warn: (msg: string, fields?: Record<string, unknown>) => void
  error: (msg: string, fields?: Record<string, unknown>) => void
  child: (name: string) => Logger
}

function redact (fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(fields)) {
    if (SECRET_KEY.test(k)) out[k] = '[redacted]'
    else if (v instanceof Error) out[k] = { message: v.message, code: (v as { code?: unknown }).code }
    else out[k] = v
  }
  return out
}

/** Where log lines go; tests swap it to capture output. */
export let logSink: (line: string) => void = line => { process.stderr.write(line + '\n') }
export function setLogSink (sink: (line: string) => void): void { logSink = sink }

/**
 * The last lines at info level and above, whatever the print threshold, so `collect_logs` can
 * return what a quiet node was doing. Bounded; secrets are redacted before they get here.
 */
const RECENT_MAX = 2000
const recent: string[] = []

export function recentLogLines (limit = 200): string[] {
  return recent.slice(-Math.max(0, Math.min(limit, RECENT_MAX)))
}

/**
 * JSON escapes C0 controls but writes DEL, C1 (U+009B is a CSI in many terminals) and the bidi
 * and line-separator controls raw; peer-chosen names and model names reach log fields, and an
 * operator reads stderr in a terminal. Escaped as `\uXXXX`, so the line stays the same JSON.
 */
const RAW_CONTROLS = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g
export function escapeControls (line: string): string {
  return line.replace(RAW_CONTROLS, c => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

export function createLogger (name: string): Logger {
  const write = (level: LogLevel) => (msg: string, fields?: Record<string, unknown>) => {
    const keep = ORDER[level] >= ORDER.info
    if (ORDER[level] < threshold && !keep) return
    const line = escapeControls(JSON.stringify({ t: new Date().toISOString(), level, component: name, msg, ...(fields != null ? redact(fields) : {}) }))
    if (keep) {
      recent.push(line)
      if (recent.length > RECENT_MAX) recent.splice(0, recent.length - RECENT_MAX)
    }
    if (ORDER[level] >= threshold) logSink(line)
  }
  return {
    trace: write('trace'),
    debug: write('debug'),
    info: write('info'),
    warn: write('warn'),
    error: write('error'),
    child: (sub: string) => createLogger(`${name}:${sub}`)
  }
}
