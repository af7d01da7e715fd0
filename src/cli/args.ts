import { parseArgs, type ParseArgsConfig } from 'node:util'
import { OPTION_SPECS } from '../config/options.js'
import { ShepherdError } from '../errors.js'

/** A command-line mistake: printed as one line, exit code 2. */
export class UsageError extends ShepherdError {
  constructor (message: string) {
    super(message, { code: 'usage', status: 400 })
  }
}

type Options = NonNullable<ParseArgsConfig['options']>

/** Flags of `start`, generated from the option table so a new setting gets its flag for free. */
export function startFlags (): Options {
  const out: Options = {
    config: { type: 'string', short: 'c' },
    'no-mdns': { type: 'boolean' },
    'no-allow-remote': { type: 'boolean' },
    'no-prefix-routing': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' }
  }
  for (const spec of OPTION_SPECS) {
    out[spec.flag] = spec.type === 'bool'
      ? { type: 'boolean' }
      : { type: 'string', multiple: spec.type === 'list' }
  }
  return out
}

export const clientFlags: Options = {
  api: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' }
}

export function parse (args: string[], options: Options): { values: Record<string, unknown>, positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true })
    return { values: values as Record<string, unknown>, positionals }
  } catch (err: any) {
    throw new UsageError(String(err.message).split('\n')[0].replace(/\. To specify a positional argument.*$/, ''))
  }
}
