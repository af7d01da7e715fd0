/**
 * The node's resource monitor: what this machine has (CPU, memory, disk, GPUs, llama.cpp
 * builds) and which GGUF models it can serve.
 */
export type * from './types.js'
export { ResourceMonitor, scaledMetricsGapMs, METRICS_GAP_PER_MEMBER_MS, type ResourceMonitorOptions, type ResourceSnapshot, type ResourceChange, type ChangeThresholds } from './monitor.js'
export { GgufFormatError, readGgufHeader, quantizationOf, tensorByteSize, GGML_TYPE_NAMES, LLAMA_FTYPE_NAMES } from './gguf.js'
export type { GgufHeader, GgufTensorInfo, GgufMetadataValue, GgufArraySummary, GgufValueTypeName, ReadGgufHeaderOptions } from './gguf.js'
export { scanModels, ModelScanCache, type ScanModelsOptions } from './models.js'
export { ContentHashCache, type ContentHashCacheOptions, type HashedFile, type ModelSource } from './content-hash.js'
export { collectSystem, SystemCollector, type CollectSystemOptions, type SystemSnapshot } from './system.js'
export { cachedGraphics, detectGpus, gpusFromControllers, vendorOf, type DetectGpusOptions, type GpuDetection } from './gpus.js'
export {
  NVIDIA_SMI_ARGS, NVIDIA_SMI_QUERY_FIELDS, NVIDIA_SMI_XML_ARGS, nvidiaSmiFailureReason, parseNvidiaSmiCsv, parseNvidiaSmiXml,
  type GpuParseResult
} from './nvidia.js'
export { ROCM_SMI_ARGS, parseRocmSmiCsv, parseRocmSmiJson } from './rocm.js'
export { LLAMA_SERVER_BINARY, findLlamacppBuilds, parseLlamacppVersion, parseLlamacppDeviceList, type FindLlamacppOptions } from './llamacpp.js'
export { execRunner, type ExecOptions, type ExecResult, type ExecRunner } from './exec.js'
