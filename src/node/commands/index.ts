/**
 * Signed commands from a group's leader (or the node's own operator): the executor that checks
 * and runs them, their durable store and audit log, and the payload of each command type.
 */
export { CommandExecutor, COMMAND_EXECUTOR_DEFAULTS, type CommandExecutorOptions, type Authority, type AuthorityVerdict, type ExecutorStats } from './executor.js'
export { CommandStore, type CommandStoreBackend, type CommandAuditEntry, type AuditVerdict, type RunRecord } from './command-store.js'
export type { CommandHandler, CommandHandlers, HandlerContext } from './handlers.js'
export {
  checkPayload, checkLlamacppArgs, LLAMACPP_ARG_RULES, UPDATABLE_CONFIG_KEYS,
  type CommandPayloads, type LoadModelPayload, type UnloadModelPayload, type RunLlamacppPayload, type StopProcessPayload,
  type ScanModelsPayload, type CollectLogsPayload, type UpdateConfigPayload, type PayloadCheck
} from './payloads.js'
