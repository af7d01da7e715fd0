import { Ajv, type ValidateFunction } from 'ajv'

let strictAjv: Ajv | undefined
let laxAjv: Ajv | undefined

/**
 * Compiles a wire or state schema on the one Ajv instance every module shares. Each instance
 * compiles JSON Schema's meta-schema and its keyword tables again: the ten a node used to build
 * were a tenth of its start-up CPU, paid once per node of a ramp on a shared machine.
 *
 * `strict: false` is for schemas that combine `oneOf` branches without a shared `type` (the
 * admission ledger's statements, invite tokens); every other schema is held to Ajv's strict mode.
 * Both allow `discriminator` (command payloads use it) and stop at the first error (the caller
 * only needs a verdict: reporting every error of a hostile message is work for the attacker).
 */
export function compileSchema<T = unknown> (schema: object, opts: { strict?: boolean } = {}): ValidateFunction<T> {
  const ajv = opts.strict === false
    ? (laxAjv ??= new Ajv({ allErrors: false, strict: false, discriminator: true }))
    : (strictAjv ??= new Ajv({ allErrors: false, discriminator: true }))
  return ajv.compile<T>(schema)
}
