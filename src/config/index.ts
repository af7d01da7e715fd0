export { defaultOptions, OPTION_SPECS, type NodeOptions, type OptionSpec, type OptionType } from './options.js'
export { resolveOptions, readConfigFile, readEnv, readFlags, validateOptions } from './load.js'
