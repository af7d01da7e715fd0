/**
 * What a node has. This is the content of a gossiped resource snapshot (seed 000 §1.2,
 * NodeResources), re-cast with byte and percentage units throughout.
 */
import type { ModelSource } from './content-hash.js'

export interface CpuInfo {
  model: string
  cores: number
  /** Physical cores where known, else equal to `cores`. */
  physicalCores: number
  /** Current total usage, 0-100. */
  usagePercent: number
  /** GHz. */
  speedGHz: number
  /** 1, 5 and 15 minute load averages. */
  loadAvg: [number, number, number]
}

export interface MemoryInfo {
  totalBytes: number
  usedBytes: number
  availableBytes: number
  /**
   * Memory this node lets loaded models hold (`--max-loaded-mb`), when set: placement counts no
   * more than this, less what is loaded, as free (issue 16: a model past every node's budget is split).
   */
  modelBudgetBytes?: number
  /**
   * Memory this node's llama.cpp rpc-servers hold for split replicas other nodes head (issue
   * 16), gossiped so that placement counts it against the model budget like a loaded model.
   */
  rpcServerBytes?: number
}

export interface DiskInfo {
  /** The filesystem holding the data dir. */
  mount: string
  totalBytes: number
  usedBytes: number
  availableBytes: number
}

export type GpuVendor = 'nvidia' | 'amd' | 'intel' | 'apple' | 'other'

export interface GpuInfo {
  index: number
  name: string
  vendor: GpuVendor
  uuid?: string
  totalMemoryBytes: number
  usedMemoryBytes: number
  /** 0-100, null when the tool does not report it. */
  utilizationPercent: number | null
  /** Celsius, null when not reported. */
  temperatureC: number | null
  driverVersion: string | null
  /** Which source produced this entry. */
  source: 'nvidia-smi' | 'rocm-smi' | 'systeminformation'
}

export type LlamacppBackend = 'cuda' | 'rocm' | 'vulkan' | 'metal' | 'sycl' | 'cpu'

export interface LlamacppBuild {
  /** Absolute path of the binary (`llama-server`). */
  path: string
  /** e.g. `4570` or `0.3.0`. */
  version: string
  /** Build number, when the output shows one. */
  build: number | null
  commit: string | null
  backend: LlamacppBackend
  /** Devices the build reported (`Device 0: NVIDIA GeForce GTX 1080, compute capability 6.1`). */
  devices: Array<{ name: string, computeCapability?: string, vramBytes?: number }>
  compiler: string | null
  target: string | null
}

export interface ModelFile {
  /** Name used in the OpenAI API: the path below the models dir without `.gguf` (`Qwen/x`). */
  name: string
  path: string
  sizeBytes: number
  architecture: string | null
  /** Parameter count from `general.parameter_count` or estimated from tensor shapes. */
  parameterCount: number | null
  /** e.g. `Q4_K_M`, `F16`, from `general.file_type`. */
  quantization: string | null
  contextLength: number | null
  /** Identity of the model: sha256 of its whole content (all parts, in order, for a split model), lowercase hex. */
  fingerprint: string
  /** Where the file came from, when this node pulled it from a peer (see content-hash.ts). */
  source?: ModelSource
}

export interface NodeResources {
  cpu: CpuInfo
  memory: MemoryInfo
  disk: DiskInfo
  gpus: GpuInfo[]
  llamacpp: LlamacppBuild[]
  /** Seconds since boot. */
  uptimeSec: number
  platform: string
  arch: string
}
